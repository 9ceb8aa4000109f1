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
use tracing::{debug, trace};

use crate::event::routing::RoutingTemplate;
use crate::event::{self, Event, Op, RowChange, TxContext};
use crate::lsn::Lsn;
use crate::pgoutput::{Message, RelationCache};
use crate::source::SourceError;
use crate::source::stream::{ReplMessage, ReplicationStream};
use crate::value::TypeRegistry;

/// What travels from the replication task to the publisher, in WAL order.
#[derive(Debug)]
pub enum Outbound {
    /// A change to publish; it belongs to the currently open transaction.
    Event(Event),
    /// The open transaction (possibly with no events) ends; confirm `end_lsn` once all of its
    /// events and everything before are broker-confirmed.
    Position(Lsn),
}

/// How the replication loop ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Shutdown,
    /// The publisher dropped its end of the channel (it failed; its error says why).
    PublisherGone,
}

/// The state of one replication session.
pub struct Replicator {
    pub stream: ReplicationStream,
    pub relations: RelationCache,
    pub types: TypeRegistry,
    pub routing: RoutingTemplate,
    pub publish_messages: bool,
    pub tx: mpsc::Sender<Outbound>,
    /// Latest broker-confirmed position, written by the publisher (a back edge that never blocks).
    pub acked: watch::Receiver<Lsn>,
    pub status_interval: Duration,
    /// The open transaction: its context and the index of its next change.
    pub open: Option<(TxContext, u64)>,
    /// Highest WAL position received, reported as the `write` position.
    pub received: Lsn,
    /// Last idle position forwarded, so repeated keepalives do not flood the channel.
    pub last_idle: Lsn,
    /// Items decoded but not yet accepted by the channel.
    pub pending: VecDeque<Outbound>,
}

impl Replicator {
    /// Runs until shutdown, publisher failure or an error.
    pub async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Stop, SourceError> {
        let mut status = tokio::time::interval(self.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                return Ok(Stop::Shutdown);
            }
            if let Some(front) = self.pending.pop_front() {
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
                    _ = shutdown.changed() => Next::Shutdown,
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
                enum Next {
                    Shutdown,
                    Status,
                    Gone,
                    Message(Result<ReplMessage, SourceError>),
                }
                let next = tokio::select! {
                    biased;
                    _ = shutdown.changed() => Next::Shutdown,
                    _ = status.tick() => Next::Status,
                    _ = self.tx.closed() => Next::Gone,
                    msg = self.stream.next() => Next::Message(msg),
                };
                match next {
                    Next::Shutdown => {}
                    Next::Status => self.send_status(false).await?,
                    Next::Gone => return Ok(Stop::PublisherGone),
                    Next::Message(msg) => self.handle(msg?).await?,
                }
            }
        }
    }

    /// Sends a status update reporting the broker-confirmed position as flushed.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), SourceError> {
        let flush = *self.acked.borrow();
        trace!(flush = %flush, write = %self.received, "standby status update");
        self.stream
            .send_status(self.received, flush, reply_requested)
            .await
    }

    async fn handle(&mut self, msg: ReplMessage) -> Result<(), SourceError> {
        match msg {
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                if reply_requested {
                    self.send_status(false).await?;
                }
                // Outside a transaction, everything before `wal_end` has been sent to us, so once
                // the events queued before this point are confirmed, the slot may move here. This
                // keeps an idle slot (or one whose tables are quiet) from holding WAL forever.
                if self.open.is_none() && wal_end > self.last_idle && wal_end > self.received {
                    self.last_idle = wal_end;
                    self.pending.push_back(Outbound::Position(wal_end));
                }
            }
            ReplMessage::XLogData {
                wal_start,
                wal_end: _,
                data,
            } => {
                if wal_start > self.received {
                    self.received = wal_start;
                }
                self.decode(&data)?;
            }
        }
        Ok(())
    }

    fn event(
        &self,
        tx: &TxContext,
        id: String,
        op: Op,
        schema: &str,
        table: &str,
        body: Vec<u8>,
    ) -> Event {
        Event {
            routing_key: self.routing.render(schema, table, op.as_str()),
            id,
            op,
            schema: schema.to_owned(),
            table: table.to_owned(),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            body,
        }
    }

    fn open_tx(&mut self, what: &str) -> Result<(TxContext, u64), SourceError> {
        let (ctx, index) = self
            .open
            .as_mut()
            .ok_or_else(|| SourceError::Protocol(format!("{what} outside a transaction")))?;
        let current = (*ctx, *index);
        *index += 1;
        Ok(current)
    }

    fn decode(&mut self, data: &[u8]) -> Result<(), SourceError> {
        match Message::parse(data)? {
            Message::Begin(b) => {
                let ctx = TxContext {
                    commit_lsn: b.final_lsn,
                    xid: Some(b.xid),
                    commit_time_us: Some(b.commit_time_us),
                };
                self.open = Some((ctx, 0));
            }
            Message::Commit(c) => {
                self.open = None;
                if c.end_lsn > self.received {
                    self.received = c.end_lsn;
                }
                self.pending.push_back(Outbound::Position(c.end_lsn));
            }
            Message::Relation(r) => {
                debug!(schema = %r.schema, table = %r.name, oid = r.oid, "relation");
                self.relations.insert(r);
            }
            Message::Type { oid, .. } => debug!(oid, "type message"),
            Message::Origin { name, .. } => {
                debug!(origin = name, "transaction from a replication origin")
            }
            Message::Insert { relation_oid, new } => {
                self.row(relation_oid, RowChange::Insert { new: &new })?
            }
            Message::Update {
                relation_oid,
                old,
                new,
            } => self.row(
                relation_oid,
                RowChange::Update {
                    old: old.as_ref(),
                    new: &new,
                },
            )?,
            Message::Delete { relation_oid, old } => {
                self.row(relation_oid, RowChange::Delete { old: &old })?
            }
            Message::Truncate(t) => {
                for oid in &t.relation_oids {
                    let (ctx, index) = self.open_tx("truncate")?;
                    let rel = Arc::clone(self.relation(*oid)?);
                    let (id, body) = event::truncate_event_body(
                        &ctx,
                        index,
                        &rel,
                        t.cascade,
                        t.restart_identity,
                    );
                    let ev = self.event(&ctx, id, Op::Truncate, &rel.schema, &rel.name, body);
                    self.pending.push_back(Outbound::Event(ev));
                }
            }
            Message::Message(m) => {
                let (ctx, index) = if m.transactional {
                    self.open_tx("transactional message")?
                } else {
                    (
                        TxContext {
                            commit_lsn: m.lsn,
                            xid: None,
                            commit_time_us: None,
                        },
                        0,
                    )
                };
                if self.publish_messages {
                    let (id, body) = event::message_event_body(
                        &ctx,
                        index,
                        m.prefix,
                        m.content,
                        m.transactional,
                    );
                    let ev = self.event(&ctx, id, Op::Message, "", m.prefix, body);
                    self.pending.push_back(Outbound::Event(ev));
                }
                // A non-transactional message stands alone: confirming its own LSN makes the
                // server send it again after a reconnect (a duplicate, never a loss).
                if !m.transactional && self.open.is_none() {
                    self.pending.push_back(Outbound::Position(m.lsn));
                }
            }
        }
        Ok(())
    }

    fn relation(&self, oid: u32) -> Result<&Arc<crate::pgoutput::Relation>, SourceError> {
        self.relations
            .get(oid)
            .ok_or(SourceError::Event(event::EventError::UnknownRelation(oid)))
    }

    fn row(&mut self, oid: u32, change: RowChange<'_>) -> Result<(), SourceError> {
        let (ctx, index) = self.open_tx("row change")?;
        let rel = Arc::clone(self.relation(oid)?);
        let (id, body) = event::row_event_body(&ctx, index, &rel, &change, &self.types)?;
        let op = match change {
            RowChange::Insert { .. } => Op::Insert,
            RowChange::Update { .. } => Op::Update,
            RowChange::Delete { .. } => Op::Delete,
        };
        let ev = self.event(&ctx, id, op, &rel.schema, &rel.name, body);
        self.pending.push_back(Outbound::Event(ev));
        Ok(())
    }
}
