//! Turning one decoded pgoutput message into outbound items: transaction boundaries become
//! positions to confirm, changes go through the filter and the flood guard and become events.
//! Plain calls inside the replication task (no I/O here).

use std::sync::Arc;

use tracing::{debug, warn};

use super::replicate::{Outbound, Replicator};
use crate::event::routing::{RouteVars, partition_of};
use crate::event::{self, Event, EventError, Op, RowChange, TxContext};
use crate::filter::flood::Candidate;
use crate::filter::predicate::RowView;
use crate::filter::{Dropped, TableView};
use crate::lsn::Lsn;
use crate::pgoutput::{Message, OldTuple};
use crate::probe;
use crate::source::SourceError;
use crate::value::{TypeKind, TypeRegistry, ValueError};

impl Replicator {
    fn open_tx(&mut self, what: &str) -> Result<(TxContext, u64), SourceError> {
        let (ctx, index) = self
            .open
            .as_mut()
            .ok_or_else(|| SourceError::Protocol(format!("{what} outside a transaction")))?;
        let current = (*ctx, *index);
        *index += 1;
        Ok(current)
    }

    fn view(&self, oid: u32) -> Result<Arc<TableView>, SourceError> {
        self.views
            .get(&oid)
            .cloned()
            .ok_or(SourceError::Event(event::EventError::UnknownRelation(oid)))
    }

    /// True when this session read the catalog after a change at or after `at` was found not
    /// to match it: a mismatch there is an old value, not a newer catalog.
    fn types_are_stale_at(&self, at: Lsn) -> bool {
        self.types_reloaded_at.is_some_and(|r| at <= r)
    }

    fn dropped(&self, reason: Dropped) {
        self.metrics.filtered(reason.as_str());
    }

    pub(super) fn decode(&mut self, data: &[u8]) -> Result<(), SourceError> {
        match Message::parse(data)? {
            Message::Begin(b) => {
                let ctx = TxContext {
                    commit_lsn: b.final_lsn,
                    xid: Some(b.xid),
                    commit_time_us: Some(b.commit_time_us),
                };
                self.open = Some((ctx, 0));
                self.flood.begin();
                self.metrics.transactions_in_progress.set(1);
            }
            Message::Commit(c) => {
                if let Some((ctx, _)) = self.open.take() {
                    self.flood.commit(&ctx, &mut self.pending);
                }
                self.metrics.transactions_in_progress.set(0);
                if c.end_lsn > self.received {
                    self.received = c.end_lsn;
                }
                self.pending.push_back(Outbound::Position(c.end_lsn));
            }
            Message::Relation(r) => {
                debug!(schema = %r.schema, table = %r.name, oid = r.oid, "relation");
                let at = self.open.map_or(self.received, |(ctx, _)| ctx.commit_lsn);
                if let Some(col) = r.columns.iter().find(|c| !self.types.knows(c.type_oid)) {
                    if !self.types_are_stale_at(at) {
                        return Err(SourceError::TypesChanged {
                            at,
                            detail: format!(
                                "{}.{} column {} has a type created after the catalog was read",
                                r.schema, r.name, col.name
                            ),
                        });
                    }
                    warn!(schema = %r.schema, table = %r.name, column = %col.name, type_oid = col.type_oid,
                          "the column's type no longer exists in the catalog: its values are sent as text");
                }
                let rel = self.relations.insert(r);
                let view = self.filter.view(&rel, &self.routing)?;
                self.views.insert(rel.oid, Arc::new(view));
            }
            Message::Type { oid, .. } => debug!(oid, "type message"),
            Message::Origin { name, .. } => {
                debug!(origin = name, "transaction from a replication origin");
                self.flood.origin(name, &mut self.pending);
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
                    let view = self.view(*oid)?;
                    if let Err(reason) = view.admit(Op::Truncate, None) {
                        self.dropped(reason);
                        continue;
                    }
                    let rel = &view.rel;
                    let (id, body) =
                        event::truncate_event_body(&ctx, index, rel, t.cascade, t.restart_identity);
                    let routing_key = view.routing.render(&RouteVars {
                        schema: &rel.schema,
                        table: &rel.name,
                        op: Op::Truncate.as_str(),
                        key: None,
                        partition: view.partitions.map(|_| 0),
                    });
                    let ev = Event {
                        id,
                        op: Op::Truncate,
                        schema: rel.schema.clone(),
                        table: rel.name.clone(),
                        commit_lsn: ctx.commit_lsn,
                        commit_time_us: ctx.commit_time_us,
                        routing_key,
                        exchange: view.exchange.clone(),
                        metric_table: Arc::clone(&view.metric_table),
                        body,
                    };
                    let c = Candidate {
                        event: ev,
                        view: Some(view),
                        index,
                        key: None,
                    };
                    self.flood.offer(c, &mut self.pending);
                }
            }
            Message::Message(m) => {
                let (ctx, index) = if m.transactional {
                    self.open_tx("transactional message")?
                } else {
                    let ctx = TxContext {
                        commit_lsn: m.lsn,
                        xid: None,
                        commit_time_us: None,
                    };
                    (ctx, 0)
                };
                let heartbeat = m.prefix == probe::HEARTBEAT_PREFIX;
                if heartbeat && let Some(at) = probe::heartbeat_emitted_us(m.content) {
                    let now_us = crate::health::now_ms() as i64 * 1000;
                    let secs = (now_us - at).max(0) as f64 / 1e6;
                    self.metrics.heartbeat_seconds.set(secs);
                }
                let marker = m.transactional && self.flood.marker(m.prefix, &mut self.pending);
                if self.publish_messages && !marker && !heartbeat {
                    let (id, body) = event::message_event_body(
                        &ctx,
                        index,
                        m.prefix,
                        m.content,
                        m.transactional,
                    );
                    let routing_key = self.routing.render(&RouteVars {
                        schema: "",
                        table: m.prefix,
                        op: Op::Message.as_str(),
                        key: None,
                        partition: None,
                    });
                    let ev = Event {
                        id,
                        op: Op::Message,
                        schema: String::new(),
                        table: m.prefix.to_owned(),
                        commit_lsn: ctx.commit_lsn,
                        commit_time_us: ctx.commit_time_us,
                        routing_key,
                        exchange: None,
                        metric_table: Arc::from("message"),
                        body,
                    };
                    if m.transactional {
                        let c = Candidate {
                            event: ev,
                            view: None,
                            index,
                            key: None,
                        };
                        self.flood.offer(c, &mut self.pending);
                    } else {
                        self.pending.push_back(Outbound::Event(ev));
                    }
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

    fn row(&mut self, oid: u32, change: RowChange<'_>) -> Result<(), SourceError> {
        let (ctx, index) = self.open_tx("row change")?;
        let view = self.view(oid)?;
        let op = match change {
            RowChange::Insert { .. } => Op::Insert,
            RowChange::Update { .. } => Op::Update,
            RowChange::Delete { .. } => Op::Delete,
        };
        let (new, old) = match &change {
            RowChange::Insert { new } => (Some(*new), None),
            RowChange::Update { old, new } => (Some(*new), *old),
            RowChange::Delete { old } => (None, Some(*old)),
        };
        let old = old.map(|o| match o {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        });
        let row = RowView {
            op: op.as_str(),
            new,
            old,
        };
        if let Err(reason) = view.admit(op, Some(&row)) {
            self.dropped(reason);
            return Ok(());
        }
        let rel = &view.rel;
        // A composite value whose attribute count differs from the catalog we read: the type
        // was altered. Read the catalog again (a new session); if the value is still older
        // than the catalog, send that column as text rather than stop for good.
        let mut demoted: Option<TypeRegistry> = None;
        let out = loop {
            let types = demoted.as_ref().unwrap_or(&self.types);
            match event::row_event_body(&ctx, index, rel, &change, view.mask.as_deref(), types) {
                Err(EventError::Value {
                    column,
                    source: source @ ValueError::RecordShape { .. },
                    ..
                }) => {
                    let type_oid = rel
                        .columns
                        .iter()
                        .find(|c| c.name == column)
                        .map_or(0, |c| c.type_oid);
                    if !self.types_are_stale_at(ctx.commit_lsn) {
                        return Err(SourceError::TypesChanged {
                            at: ctx.commit_lsn,
                            detail: format!(
                                "{}.{} column {column}: {source}",
                                rel.schema, rel.name
                            ),
                        });
                    }
                    if matches!(types.kind(type_oid), TypeKind::Text) {
                        // Already text: cannot happen, but never loop.
                        return Err(SourceError::Event(EventError::Value {
                            schema: rel.schema.clone(),
                            table: rel.name.clone(),
                            column,
                            source,
                        }));
                    }
                    warn!(schema = %rel.schema, table = %rel.name, column = %column, lsn = %ctx.commit_lsn,
                          "a composite value older than the type's current definition: sent as text");
                    self.metrics.values_as_text.inc();
                    demoted = Some(types.with_text(type_oid));
                }
                other => break other?,
            }
        };
        let key = event::key_tuple(rel, &change).map(|t| (&**rel, t));
        let routing_key = view.routing.render(&RouteVars {
            schema: &rel.schema,
            table: &rel.name,
            op: op.as_str(),
            key,
            partition: view.partitions.map(|n| partition_of(key, n)),
        });
        let ev = Event {
            id: out.id,
            op,
            schema: rel.schema.clone(),
            table: rel.name.clone(),
            commit_lsn: ctx.commit_lsn,
            commit_time_us: ctx.commit_time_us,
            routing_key,
            exchange: view.exchange.clone(),
            metric_table: Arc::clone(&view.metric_table),
            body: out.body,
        };
        let c = Candidate {
            event: ev,
            view: Some(view),
            index,
            key: out.key,
        };
        self.flood.offer(c, &mut self.pending);
        Ok(())
    }
}
