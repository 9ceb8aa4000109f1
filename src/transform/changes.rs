//! The transform's row work: a change becomes an event (filter, flood guard, rendering),
//! and a truncate or a logical message becomes events of their own.

use std::collections::VecDeque;

use tracing::warn;

use super::flood::Candidate;
use super::{Transform, TransformError};
use crate::event::{self, Event, EventError, Op, Outbound, RowChange, TxContext};
use crate::filter::TableView;
use crate::filter::predicate::RowView;
use crate::pgoutput::{LogicalMessage, OldTuple, Truncate};
use crate::value::{TypeKind, TypeRegistry, ValueError};

impl Transform {
    pub(super) fn truncate(
        &mut self,
        t: &Truncate,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        for oid in &t.relation_oids {
            let (ctx, index) = self.open_tx("truncate")?;
            let view = self.view(*oid)?;
            if self.windows.watching(&view.table.schema, &view.table.name) {
                self.windows.truncated();
            }
            if !self.admitted(&view, view.admit(Op::Truncate, None), (&ctx, index))? {
                continue;
            }
            let (id, body) =
                event::truncate_event_body(&ctx, index, &view.table, t.cascade, t.restart_identity);
            let event = view.event(Op::Truncate, &ctx, id, body, None);
            let c = Candidate {
                event,
                view: Some(view),
                index,
                key: None,
            };
            self.flood.offer(c, out);
        }
        Ok(())
    }

    pub(super) fn message(
        &mut self,
        m: &LogicalMessage<'_>,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
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
        if m.prefix == crate::backfill::PREFIX {
            // Watermarks steer the backfill and are never published.
            return self.watermark(m, out);
        }
        if m.prefix == crate::backfill::CONTROL_PREFIX {
            // walrelay's own announcements, published as control events (or not at all).
            self.announced(m, out);
            if !m.transactional && self.open.is_none() {
                out.push_back(Outbound::Position(m.lsn));
            }
            return Ok(());
        }
        let heartbeat = m.prefix == super::heartbeat::PREFIX;
        if heartbeat && let Some(at) = super::heartbeat::emitted_us(m.content) {
            let now_us = crate::health::now_ms() as i64 * 1000;
            let secs = (now_us - at).max(0) as f64 / 1e6;
            self.metrics.heartbeat_seconds.set(secs);
        }
        let marker = m.transactional && self.flood.marker(m.prefix, out);
        if self.settings.publish_messages && !marker && !heartbeat {
            let (id, body) =
                event::message_event_body(&ctx, index, m.prefix, m.content, m.transactional);
            let routing_key = self.settings.routing.render(&event::routing::RouteVars {
                schema: "",
                table: m.prefix,
                op: Op::Message.as_str(),
                key: None,
                partition: None,
            });
            let ev = Event::message(id, m.prefix, &ctx, routing_key, body);
            if m.transactional {
                let c = Candidate {
                    event: ev,
                    view: None,
                    index,
                    key: None,
                };
                self.flood.offer(c, out);
            } else {
                out.push_back(Outbound::Event(ev));
            }
        }
        // A non-transactional message stands alone: confirming its own LSN makes the server
        // send it again after a reconnect (a duplicate, never a loss).
        if !m.transactional && self.open.is_none() {
            out.push_back(Outbound::Position(m.lsn));
        }
        Ok(())
    }

    pub(super) fn row(
        &mut self,
        oid: u32,
        change: RowChange<'_>,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        let (ctx, index) = self.open_tx("row change")?;
        let view = self.view(oid)?;
        let op = change.op();
        let (new, old) = match &change {
            RowChange::Insert { new } | RowChange::Read { new } => (Some(*new), None),
            RowChange::Update { old, new } => (Some(*new), *old),
            RowChange::Delete { old } => (None, Some(*old)),
        };
        let old = old.map(|o| match o {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        });
        if self.windows.watching(&view.table.schema, &view.table.name) {
            // A backfill chunk is open on this table: this change supersedes its row.
            for t in [new, old].into_iter().flatten() {
                if let Some(k) = event::key_json(&view.rel, &view.table, t, &self.types)? {
                    self.windows.changed(k);
                }
            }
        }
        let row = RowView {
            op: op.as_str(),
            new,
            old,
        };
        if !self.admitted(&view, view.admit(op, Some(&row)), (&ctx, index))? {
            return Ok(());
        }
        let id = event::event_id(ctx.commit_lsn, index);
        let out_body = self.render_row(&ctx, &id, &view, &change)?;
        let key = event::key_tuple(&view.table, &change);
        let event = view.event(op, &ctx, id, out_body.body, key);
        let c = Candidate {
            event,
            view: Some(view),
            index,
            key: out_body.key,
        };
        self.flood.offer(c, out);
        Ok(())
    }

    /// Renders a row change's body. A composite value whose attribute count differs from the
    /// catalog we read means the type was altered: read the catalog again (a new session); if
    /// the value is still older than the catalog, send that column as text rather than stop
    /// for good.
    pub(super) fn render_row(
        &self,
        ctx: &TxContext,
        id: &str,
        view: &TableView,
        change: &RowChange<'_>,
    ) -> Result<event::RowBody, TransformError> {
        let rel = &view.rel;
        let mut demoted: Option<TypeRegistry> = None;
        loop {
            let types = demoted.as_ref().unwrap_or(&self.types);
            let mask = view.mask.as_deref();
            match event::row_event_body(ctx, id, rel, &view.table, change, mask, types) {
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
                        return Err(TransformError::TypesChanged {
                            at: ctx.commit_lsn,
                            detail: format!(
                                "{}.{} column {column}: {source}",
                                rel.schema, rel.name
                            ),
                        });
                    }
                    if matches!(types.kind(type_oid), TypeKind::Text) {
                        // Already text: cannot happen, but never loop.
                        return Err(TransformError::Event(EventError::Value {
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
                other => return Ok(other?),
            }
        }
    }
}
