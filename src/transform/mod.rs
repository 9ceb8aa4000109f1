//! The transform stage: pure. It turns decoded pgoutput messages into outbound items —
//! transaction ends become positions to confirm, changes go through the filter and the flood
//! guard and become events — and owns everything that takes: the relations pgoutput described,
//! the filter's verdict per relation, the type catalog, the flood guard and the open
//! transaction. No I/O: the replication task calls it, and unit tests drive it with messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::event::routing::RoutingTemplate;
use crate::event::{EventError, Outbound, RowChange, TxContext};
use crate::filter::{Admit, FilterSettings, OnUnmatched, RuleError, TableView};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::{Message, Relation, RelationCache};
use crate::schema::RelationFacts;
use crate::value::TypeRegistry;
use flood::FloodGuard;

/// What the transform needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct TransformSettings {
    /// The default routing key template (tables may override it).
    pub routing: RoutingTemplate,
    /// Publish `pg_logical_emit_message` messages (op `message`).
    pub publish_messages: bool,
    pub filter: Arc<FilterSettings>,
    /// Written into this session's backfill watermarks (marks of other sessions are skipped).
    pub session: String,
    /// The routing key prefix of control events; `None` when they are off.
    pub control_prefix: Option<String>,
    /// Publish the backfill control events (`backfill_started`, …).
    pub backfill_events: bool,
    /// Publish `schema_changed` and `slot_created` control events.
    pub schema_events: bool,
}

/// Why a message could not be transformed.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The server sent messages in an order pgoutput never uses.
    #[error("{0}")]
    Sequence(String),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A type changed after the catalog was read: a new session must read it again.
    #[error("{detail}")]
    TypesChanged { at: Lsn, detail: String },
    /// A change of a table the configuration does not mention, with `on_unmatched = "stop"`.
    #[error(
        "a change of {table} reached walrelay, but no filter.include pattern matches it{root}: \
         add it to filter.include to publish its changes or to filter.exclude to drop them \
         (filter.on_unmatched = \"stop\" stops instead of dropping them with a warning)"
    )]
    Unmatched { table: String, root: String },
}

/// The transform's state for one replication session.
pub(crate) struct Transform {
    settings: TransformSettings,
    relations: RelationCache,
    types: TypeRegistry,
    /// See `Memory::types_reloaded_at` in the pipeline: changes committed at or before it that
    /// still do not match `types` are sent with the mismatching values as text.
    types_reloaded_at: Option<Lsn>,
    /// The filter's verdicts per relation OID, resolved when pgoutput describes the relation.
    views: HashMap<u32, Arc<TableView>>,
    flood: FloodGuard,
    metrics: Arc<Metrics>,
    /// The open transaction: its context and the index of its next change.
    open: Option<(TxContext, u64)>,
    /// The catalog's facts by relation OID, learned before pgoutput's description of the
    /// relation is applied (`None`: the catalog did not have it).
    facts: HashMap<u32, Option<RelationFacts>>,
    /// Relations whose unmatched changes were already warned about (once per relation).
    warned_unmatched: HashSet<u32>,
    /// What earlier sessions counted in the metrics: a session that ends on an error replays
    /// what was not confirmed, and a change is counted once, not once per attempt.
    counted: Counted,
    /// What this session counted so far (for the next session).
    seen: Counted,
    /// The backfill window and the chunks waiting for their high mark.
    windows: crate::backfill::window::Windows,
    /// Chunks published in the open transaction, whose end position the worker waits for.
    chunk_ends_pending: Vec<(i64, i64)>,
    /// Chunks published, with their transaction's end position, for the worker.
    chunk_ends: Vec<(i64, i64, Lsn)>,
}

/// How far the metrics have counted, in stream order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The last change counted: its transaction's commit LSN and its index.
    pub change: Option<(Lsn, u64)>,
    /// The last transaction whose commit was seen (its flood counted).
    pub commit: Option<Lsn>,
}

impl Counted {
    /// The later of two, field by field.
    pub(crate) fn max(self, other: Counted) -> Counted {
        Counted {
            change: self.change.max(other.change),
            commit: self.commit.max(other.commit),
        }
    }
}

impl Transform {
    pub(crate) fn new(
        settings: TransformSettings,
        types: TypeRegistry,
        types_reloaded_at: Option<Lsn>,
        metrics: Arc<Metrics>,
    ) -> Transform {
        let flood = FloodGuard::new(
            settings.filter.flood.clone(),
            settings.filter.counts_changes(),
            Arc::clone(&metrics),
        );
        let windows = crate::backfill::window::Windows::new(settings.session.clone());
        Transform {
            windows,
            chunk_ends_pending: Vec::new(),
            chunk_ends: Vec::new(),
            settings,
            relations: RelationCache::default(),
            types,
            types_reloaded_at,
            views: HashMap::new(),
            flood,
            metrics,
            open: None,
            facts: HashMap::new(),
            warned_unmatched: HashSet::new(),
            counted: Counted::default(),
            seen: Counted::default(),
        }
    }

    /// What earlier sessions already counted.
    pub(crate) fn counted(mut self, counted: Counted) -> Transform {
        self.counted = counted;
        self
    }

    /// What this session counted (for the next session's [`Transform::counted`]).
    pub(crate) fn seen(&self) -> Counted {
        self.seen
    }

    /// True when the change at `index` of the transaction committing at `lsn` is counted now:
    /// no earlier session counted it.
    fn count_change(&mut self, lsn: Lsn, index: u64) -> bool {
        self.seen.change = self.seen.change.max(Some((lsn, index)));
        self.counted.change.is_none_or(|c| (lsn, index) > c)
    }

    /// Records what the catalog says about relation `oid`, for its next Relation message.
    pub(crate) fn learn(&mut self, oid: u32, facts: Option<RelationFacts>) {
        self.facts.insert(oid, facts);
    }

    /// A backfill chunk, handed over before its high watermark is written.
    pub(crate) fn offer_chunk(&mut self, chunk: crate::backfill::Chunk) {
        self.windows.offer(chunk);
    }

    /// The chunks published since the last call, with their transaction's end position.
    pub(crate) fn take_chunk_ends(&mut self) -> Vec<(i64, i64, Lsn)> {
        std::mem::take(&mut self.chunk_ends)
    }

    /// The backfills committed floods asked for (`flood.then = "backfill"`): the replication
    /// task records them before the flood's end position leaves it.
    pub(crate) fn take_flood_backfills(&mut self) -> Vec<flood_backfill::FloodBackfill> {
        self.flood.take_backfills()
    }

    /// True between a transaction's Begin and its Commit.
    pub(crate) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The commit LSN of the open transaction, else `fallback`.
    fn position(&self, fallback: Lsn) -> Lsn {
        self.open.map_or(fallback, |(ctx, _)| ctx.commit_lsn)
    }

    /// Transforms one message, appending what it yields to `out` in WAL order. `received` is
    /// the highest WAL position received (the position of messages outside a transaction).
    pub(crate) fn apply(
        &mut self,
        msg: Message<'_>,
        received: Lsn,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        match msg {
            Message::Begin(b) => {
                let ctx = TxContext {
                    commit_lsn: b.final_lsn,
                    xid: Some(b.xid),
                    commit_time_us: Some(b.commit_time_us),
                };
                self.open = Some((ctx, 0));
                let count = self.counted.commit.is_none_or(|c| b.final_lsn > c);
                self.flood.begin(count);
                self.metrics.transactions_in_progress.set(1);
            }
            Message::Commit(c) => {
                if let Some((ctx, _)) = self.open.take() {
                    self.flood.commit(&ctx, out);
                    for (b, n) in self.chunk_ends_pending.drain(..) {
                        self.chunk_ends.push((b, n, c.end_lsn));
                    }
                    self.seen.commit = self.seen.commit.max(Some(ctx.commit_lsn));
                }
                self.metrics.transactions_in_progress.set(0);
                self.metrics
                    .progress_transactions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.push_back(Outbound::Position(c.end_lsn));
            }
            Message::Relation(r) => self.relation(r, received, out)?,
            Message::Type { oid, .. } => debug!(oid, "type message"),
            Message::Origin { name, .. } => {
                debug!(origin = name, "transaction from a replication origin");
                self.flood.origin(name, out);
            }
            Message::Insert { relation_oid, new } => {
                self.row(relation_oid, RowChange::Insert { new: &new }, out)?
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
                out,
            )?,
            Message::Delete { relation_oid, old } => {
                self.row(relation_oid, RowChange::Delete { old: &old }, out)?
            }
            Message::Truncate(t) => self.truncate(&t, out)?,
            Message::Message(m) => self.message(&m, out)?,
        }
        Ok(())
    }

    fn open_tx(&mut self, what: &str) -> Result<(TxContext, u64), TransformError> {
        let (ctx, index) = self
            .open
            .as_mut()
            .ok_or_else(|| TransformError::Sequence(format!("{what} outside a transaction")))?;
        let current = (*ctx, *index);
        *index += 1;
        Ok(current)
    }

    fn view(&self, oid: u32) -> Result<Arc<TableView>, TransformError> {
        self.views
            .get(&oid)
            .cloned()
            .ok_or(TransformError::Event(EventError::UnknownRelation(oid)))
    }

    /// True when this session read the catalog after a change at or after `at` was found not
    /// to match it: a mismatch there is an old value, not a newer catalog.
    fn types_are_stale_at(&self, at: Lsn) -> bool {
        self.types_reloaded_at.is_some_and(|r| at <= r)
    }

    /// Applies the accounting rule: every change the filter looks at is published (`true`),
    /// dropped by an explicit rule and counted by reason, or — for a table the configuration
    /// does not mention — warned about once per relation and counted, or stopped on.
    fn admitted(
        &mut self,
        view: &TableView,
        admit: Admit,
        (ctx, index): (&TxContext, u64),
    ) -> Result<bool, TransformError> {
        let count = admit != Admit::Publish && self.count_change(ctx.commit_lsn, index);
        match admit {
            Admit::Publish => Ok(true),
            Admit::Drop(reason) => {
                if count {
                    self.metrics.filtered(reason.as_str());
                }
                Ok(false)
            }
            Admit::Unmatched => {
                let t = &view.table;
                let (table, root) = match &t.partition {
                    Some(p) => (
                        p.to_string(),
                        format!(" (nor its partition root {}.{})", t.schema, t.name),
                    ),
                    None => (format!("{}.{}", t.schema, t.name), String::new()),
                };
                if self.settings.filter.on_unmatched == OnUnmatched::Stop {
                    return Err(TransformError::Unmatched { table, root });
                }
                if count {
                    self.metrics.events_unmatched.inc();
                }
                if self.warned_unmatched.insert(view.rel.oid) {
                    warn!(table = %table, root = %format!("{}.{}", t.schema, t.name),
                          "changes of this table reach walrelay but no filter.include pattern matches it: \
                           they are dropped (add it to filter.include to publish them, or to filter.exclude \
                           to drop them without this warning; filter.on_unmatched = \"stop\" stops instead)");
                }
                Ok(false)
            }
        }
    }

    fn relation(
        &mut self,
        r: Relation,
        received: Lsn,
        out: &mut VecDeque<Outbound>,
    ) -> Result<(), TransformError> {
        debug!(schema = %r.schema, table = %r.name, oid = r.oid, "relation");
        let at = self.position(received);
        if let Some(col) = r.columns.iter().find(|c| !self.types.knows(c.type_oid)) {
            if !self.types_are_stale_at(at) {
                return Err(TransformError::TypesChanged {
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
        let facts = self.facts.get(&r.oid).cloned().flatten();
        let previous = self.relations.get(r.oid).cloned();
        let rel = self.relations.insert(r);
        let view = self
            .settings
            .filter
            .view(&rel, facts.as_ref(), &self.settings.routing)?;
        if view.table.partition.is_some() {
            debug!(partition = %format!("{}.{}", rel.schema, rel.name), root = %format!("{}.{}", view.table.schema, view.table.name),
                   "a partition's changes are named after its root");
        }
        if let Some(old) = previous
            && self.settings.schema_events
            && view.verdict == crate::filter::Verdict::Included
        {
            self.schema_changed(&old, &view, out);
        }
        self.views.insert(rel.oid, Arc::new(view));
        Ok(())
    }
}

mod backfill;
mod changes;
pub(crate) mod flood;
mod flood_backfill;
pub(crate) use flood_backfill::FloodBackfill;
#[cfg(test)]
mod flood_tests;
pub(crate) mod heartbeat;
#[cfg(test)]
mod tests;
