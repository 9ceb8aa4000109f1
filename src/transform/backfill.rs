//! The transform's backfill work: watermarks steer the window (`backfill::window`), a high
//! mark publishes what is left of its chunk as `read` events — rendered by the same code as
//! streamed changes, through the same filter view — and control events announce, in stream
//! order, a backfill's start, end or cancellation, a table's new shape and a new slot.

use std::collections::{HashSet, VecDeque};

use super::{Transform, TransformError};
use crate::backfill::window::Step;
use crate::backfill::{Chunk, Mark, read_id};
use crate::event::{self, Body, Event, Op, Outbound, RowChange, TableIdentity, TxContext};
use crate::filter::{Admit, TableView, predicate::RowView};
use crate::pgoutput::{Datum, LogicalMessage, Relation, TupleData};

impl Transform {
    /// A watermark: never published; it may publish a chunk or a control event.
    pub(super) fn watermark(
        &mut self,
        m: &LogicalMessage<'_>,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        let Some(mark) = Mark::parse(m.content).filter(|_| m.transactional) else {
            tracing::debug!(lsn = %m.lsn, "a message under the backfill prefix that is no watermark: ignored");
            if !m.transactional && self.open.is_none() {
                out.push_back(Outbound::Position(m.lsn));
            }
            return Ok(());
        };
        let (ctx, _) = self.open_tx("backfill watermark")?;
        let step = self
            .windows
            .mark(mark)
            .map_err(|e| TransformError::Sequence(e.to_string()))?;
        match step {
            Step::None => {}
            Step::Started(mark) => self.control(&ctx, "backfill_started", &mark, out),
            Step::Finished(mark) => self.control(&ctx, "backfill_finished", &mark, out),
            Step::Cancelled(mark) => self.control(&ctx, "backfill_cancelled", &mark, out),
            Step::Publish {
                chunk,
                superseded,
                truncated,
            } => {
                let id = (chunk.backfill, chunk.chunk);
                self.publish_chunk(&ctx, &chunk, &superseded, truncated, out)?;
                self.chunk_ends_pending.push(id);
            }
        }
        Ok(())
    }

    fn publish_chunk(
        &mut self,
        ctx: &TxContext,
        chunk: &Chunk,
        superseded: &HashSet<String>,
        truncated: bool,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        let view =
            self.settings
                .filter
                .view(&chunk.rel, chunk.facts.as_ref(), &self.settings.routing)?;
        self.metrics.backfill_read.inc_by(chunk.rows.len() as u64);
        let mut warned = false;
        for row in &chunk.rows {
            let tuple = TupleData {
                columns: row
                    .iter()
                    .map(|v| {
                        v.as_deref()
                            .map_or(Datum::Null, |s| Datum::Text(s.as_bytes()))
                    })
                    .collect(),
            };
            let Some(key) = event::key_json(&view.rel, &view.table, &tuple, &self.types)? else {
                continue;
            };
            if truncated || superseded.contains(&key) {
                // The stream carries a newer state of this row (or its removal).
                self.metrics.backfill_superseded.inc();
                continue;
            }
            let rv = RowView {
                op: Op::Read.as_str(),
                new: Some(&tuple),
                old: None,
            };
            match view.admit(Op::Read, Some(&rv)) {
                Admit::Publish => {}
                Admit::Drop(reason) => {
                    self.metrics
                        .events_filtered
                        .get_or_create(&[("reason", reason.as_str())])
                        .inc();
                    continue;
                }
                // `walrelay backfill` refuses tables the filter does not include; the filter
                // changed since the request. Counted and said, like any unmatched change.
                Admit::Unmatched => {
                    self.metrics.events_unmatched.inc();
                    if !warned {
                        warned = true;
                        tracing::warn!(table = %format!("{}.{}", view.table.schema, view.table.name), backfill = chunk.backfill,
                            "backfilled rows of a table no filter.include pattern matches: dropped and counted in walrelay_events_unmatched_total");
                    }
                    continue;
                }
            }
            let id = read_id(chunk.backfill, &key);
            let body = self.render_row(ctx, &id, &view, &RowChange::Read { new: &tuple })?;
            let ev = view.event(Op::Read, ctx, id, body.body, Some(&tuple));
            out.push_back(Outbound::Event(ev));
        }
        Ok(())
    }

    /// A backfill's control event, when they are on, with a stable id.
    fn control(&self, ctx: &TxContext, kind: &str, mark: &Mark, out: &mut VecDeque<Outbound>) {
        if !self.settings.backfill_events {
            return;
        }
        let id = format!(
            "backfill:{}:{}",
            mark.backfill,
            kind.trim_start_matches("backfill_")
        );
        let table = TableIdentity {
            schema: mark.schema.clone(),
            name: mark.table.clone(),
            partition: None,
            key: None,
        };
        let detail = serde_json::json!({
            "id": mark.backfill,
            "where": mark.where_clause,
            "rows": mark.rows,
        });
        self.publish_control(ctx, id, kind, Some(&table), ("backfill", detail), out);
    }

    /// `schema_changed`: pgoutput described a relation again with other columns (added,
    /// dropped, renamed or retyped). Published where the new description arrives: before the
    /// first change under the new shape.
    pub(super) fn schema_changed(
        &self,
        old: &Relation,
        view: &TableView,
        out: &mut VecDeque<Outbound>,
    ) {
        let shape = |r: &Relation| -> Vec<serde_json::Value> {
            r.columns
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "type_oid": c.type_oid,
                        "type_modifier": c.type_modifier,
                    })
                })
                .collect()
        };
        let (before, after) = (shape(old), shape(&view.rel));
        if before == after {
            return;
        }
        let Some((ctx, index)) = self.open else {
            return;
        };
        let id = format!("{}:schema:{index}:{}", ctx.commit_lsn, view.rel.oid);
        let detail = serde_json::json!({"old": before, "new": after});
        self.publish_control(
            &ctx,
            id,
            "schema_changed",
            Some(&view.table),
            ("columns", detail),
            out,
        );
    }

    /// A message under the control prefix (`slot_created`, written when walrelay created its
    /// slot; `stream_gap`, written by a resync): a control event where it streams.
    pub(super) fn announced(&mut self, m: &LogicalMessage<'_>, out: &mut VecDeque<Outbound>) {
        let Ok(detail) = serde_json::from_slice::<serde_json::Value>(m.content) else {
            return;
        };
        let kind = detail["kind"].as_str().unwrap_or("").to_owned();
        // `stream_gap` (a resync) goes wherever control events go: a consumer must learn that
        // its copy may be stale. `slot_created` only with the schema events.
        let wanted = match kind.as_str() {
            "stream_gap" => true,
            "slot_created" => self.settings.schema_events,
            _ => false,
        };
        if !wanted {
            return;
        }
        let ctx = self.open.map_or(
            TxContext {
                commit_lsn: m.lsn,
                xid: None,
                commit_time_us: None,
            },
            |(ctx, _)| ctx,
        );
        let id = format!("{}:{kind}", ctx.commit_lsn);
        if kind == "stream_gap" {
            let mut gap = detail;
            if let Some(o) = gap.as_object_mut() {
                o.remove("kind");
            }
            self.publish_control(&ctx, id, &kind, None, ("gap", gap), out);
            return;
        }
        let slot = detail["slot"].clone();
        self.publish_control(&ctx, id, &kind, None, ("slot", slot), out);
    }

    /// A control event on `<prefix>.<kind>`, when control events are on.
    fn publish_control(
        &self,
        ctx: &TxContext,
        id: String,
        kind: &str,
        table: Option<&TableIdentity>,
        (field, detail): (&str, serde_json::Value),
        out: &mut VecDeque<Outbound>,
    ) {
        let Some(prefix) = &self.settings.control_prefix else {
            return;
        };
        let mut body = Body::start(&id, Op::Control, table, ctx);
        body.string_field("kind", kind);
        body.raw_field(field, &detail.to_string());
        let ev = Event::control(id, table, ctx, format!("{prefix}.{kind}"), body.finish());
        out.push_back(Outbound::Event(ev));
    }
}
