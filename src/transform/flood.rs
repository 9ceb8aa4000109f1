//! The flood guard: decides, per transaction, whether it is a bulk "flood" (a migration, a
//! backfill) and applies each table's flood policy to its changes.
//!
//! A transaction is a flood when a marker says so before its changes (a transactional logical
//! message with the configured prefix, or a configured replication origin, which pgoutput
//! reports right after `Begin`), or when it carries more published changes than `max_changes`
//! (in total, or to one table). For the count, changes are held until the limit is passed or
//! the transaction commits, so at most `max_changes` events of an undecided transaction are in
//! memory. pgoutput v1 sends a transaction only after it committed, so holding them adds no
//! latency. The LSN contract is untouched: the transaction's end LSN is still forwarded after
//! its (possibly zero) events, so the slot moves past skipped and summarized floods.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tracing::{info, warn};

use super::flood_backfill::{FloodBackfill, Touched};
use crate::event::Outbound;
use crate::event::{self, BulkSummary, Event, Op, TxContext};
use crate::filter::{FloodPolicy, FloodSettings, TableView};
use crate::metrics::Metrics;

/// A change that passed the filter, waiting for the flood decision.
pub(crate) struct Candidate {
    pub event: Event,
    /// The table's rules; `None` for a logical message, which is held in order with the
    /// changes but never counted, summarized or rerouted.
    pub view: Option<Arc<TableView>>,
    /// Position of the change in the transaction (the id's index).
    pub index: u64,
    /// Where the `key` object sits in the event body.
    pub key: Option<std::ops::Range<usize>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Counting: changes are held until the limit or the commit.
    Undecided,
    /// Not a flood: changes pass straight through.
    Normal,
    /// A flood, for this reason.
    Flood(&'static str),
}

/// One summarized table of a flood transaction.
struct Summary {
    view: Arc<TableView>,
    first_index: u64,
    bulk: BulkSummary,
}

/// Per-policy change counts of the current flood, for its log line.
#[derive(Default)]
struct Tally {
    skipped: u64,
    summarized: u64,
    rerouted: u64,
    published: u64,
}

/// The flood guard's state for the open transaction.
pub(crate) struct FloodGuard {
    settings: FloodSettings,
    /// True when some count limit exists, so transactions start undecided.
    counting: bool,
    mode: Mode,
    total: u64,
    per_table: HashMap<u32, u64>,
    held: Vec<Candidate>,
    summaries: Vec<Summary>,
    /// Tables of this flood whose touched rows are backfilled after it (`flood.then`), by oid.
    touched: Vec<(u32, Touched)>,
    /// Backfills floods asked for, until the replication task records them.
    backfills: Vec<FloodBackfill>,
    tally: Tally,
    metrics: Arc<Metrics>,
    /// False while replaying a transaction an earlier session already counted (a retry after
    /// a failure): its floods are not counted twice.
    count: bool,
}

impl FloodGuard {
    /// `counting`: whether any count limit is configured (globally or on a table rule).
    pub(crate) fn new(
        settings: FloodSettings,
        counting: bool,
        metrics: Arc<Metrics>,
    ) -> FloodGuard {
        FloodGuard {
            settings,
            counting,
            mode: Mode::Normal,
            total: 0,
            per_table: HashMap::new(),
            held: Vec::new(),
            summaries: Vec::new(),
            touched: Vec::new(),
            backfills: Vec::new(),
            tally: Tally::default(),
            metrics,
            count: true,
        }
    }

    /// Changes held while undecided (never more than the count limit, plus one).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// A transaction begins; `count`: whether its floods go into the metrics (false for a
    /// transaction an earlier session already counted).
    pub(crate) fn begin(&mut self, count: bool) {
        self.count = count;
        self.mode = if self.counting {
            Mode::Undecided
        } else {
            Mode::Normal
        };
        self.total = 0;
        self.per_table.clear();
        self.held.clear();
        self.summaries.clear();
        self.touched.clear();
        self.tally = Tally::default();
    }

    /// The backfills committed floods asked for since the last call.
    pub(crate) fn take_backfills(&mut self) -> Vec<FloodBackfill> {
        std::mem::take(&mut self.backfills)
    }

    /// pgoutput's Origin message: the transaction is replayed from a replication origin.
    pub(crate) fn origin(&mut self, name: &str, out: &mut VecDeque<Outbound>) {
        if self.settings.origins.iter().any(|o| o == name) {
            self.declare(FloodReason::Origin, out);
        }
    }

    /// A transactional logical message. Returns true when it is the flood marker (which is
    /// consumed, never published).
    pub(crate) fn marker(&mut self, prefix: &str, out: &mut VecDeque<Outbound>) -> bool {
        if self.settings.marker_prefix.as_deref() != Some(prefix) {
            return false;
        }
        if self.total > 0 && self.mode == Mode::Normal {
            warn!(
                changes_already_published = self.total,
                "flood marker arrives after changes that were already published; it applies to the rest"
            );
        }
        self.declare(FloodReason::Marker, out);
        true
    }

    /// Offers a change that passed the filter.
    pub(crate) fn offer(&mut self, c: Candidate, out: &mut VecDeque<Outbound>) {
        let Some(view) = &c.view else {
            match self.mode {
                Mode::Undecided => self.held.push(c),
                _ => out.push_back(Outbound::Event(c.event)),
            }
            return;
        };
        let table_max = view.max_changes;
        self.total += 1;
        let table_count = {
            let n = self.per_table.entry(view.rel.oid).or_default();
            *n += 1;
            *n
        };
        match self.mode {
            Mode::Normal => out.push_back(Outbound::Event(c.event)),
            Mode::Flood(_) => self.apply(c, out),
            Mode::Undecided => {
                let over_total = self.settings.max_changes.is_some_and(|m| self.total > m);
                let over_table = table_max.is_some_and(|m| table_count > m);
                self.held.push(c);
                if over_total || over_table {
                    self.declare(FloodReason::MaxChanges, out);
                }
            }
        }
    }

    /// The transaction commits: held changes are released, summaries are emitted.
    pub(crate) fn commit(&mut self, tx: &TxContext, out: &mut VecDeque<Outbound>) {
        match self.mode {
            Mode::Undecided | Mode::Normal => {
                out.extend(self.held.drain(..).map(|c| Outbound::Event(c.event)));
            }
            Mode::Flood(reason) => {
                for (_, t) in self.touched.drain(..) {
                    let where_clause = t.where_clause();
                    if let Some(s) = self.summaries.iter_mut().find(|s| {
                        (s.view.table.schema.as_str(), s.view.table.name.as_str())
                            == (t.table.schema.as_str(), t.table.name.as_str())
                    }) {
                        s.bulk.backfill = Some(t.note());
                    }
                    self.backfills.push(FloodBackfill {
                        table: t.table,
                        where_clause,
                    });
                }
                for s in self.summaries.drain(..) {
                    let (id, body) =
                        event::bulk_event_body(tx, s.first_index, &s.view.table, &s.bulk);
                    out.push_back(Outbound::Event(s.view.event(Op::Bulk, tx, id, body, None)));
                }
                let t = &self.tally;
                info!(
                    commit_lsn = %tx.commit_lsn,
                    xid = tx.xid,
                    reason,
                    changes = self.total,
                    skipped = t.skipped,
                    summarized = t.summarized,
                    rerouted = t.rerouted,
                    published = t.published,
                    "flood transaction"
                );
                if self.count {
                    self.metrics.flood_events("skip", t.skipped);
                    self.metrics.flood_events("summarize", t.summarized);
                    self.metrics.flood_events("reroute", t.rerouted);
                    self.metrics.flood_events("publish", t.published);
                }
            }
        }
        self.mode = Mode::Normal;
    }

    fn declare(&mut self, reason: FloodReason, out: &mut VecDeque<Outbound>) {
        if matches!(self.mode, Mode::Flood(_)) {
            return;
        }
        let reason = reason.as_str();
        self.mode = Mode::Flood(reason);
        if self.count {
            self.metrics
                .flood_transactions
                .get_or_create(&[("trigger", reason)])
                .inc();
        }
        let held: Vec<Candidate> = self.held.drain(..).collect();
        for c in held {
            self.apply(c, out);
        }
    }

    fn apply(&mut self, mut c: Candidate, out: &mut VecDeque<Outbound>) {
        let Some(view) = c.view.clone() else {
            out.push_back(Outbound::Event(c.event));
            return;
        };
        match view.flood_policy {
            FloodPolicy::Publish => {
                self.tally.published += 1;
                out.push_back(Outbound::Event(c.event));
            }
            FloodPolicy::Skip => {
                self.tally.skipped += 1;
                self.touch(&view, &c);
            }
            FloodPolicy::Reroute => {
                self.tally.rerouted += 1;
                if let Some(r) = &self.settings.reroute {
                    if let Some(x) = &r.exchange {
                        c.event.exchange = Some(Arc::from(x.as_str()));
                    }
                    c.event.routing_key.insert_str(0, &r.prefix);
                }
                out.push_back(Outbound::Event(c.event));
            }
            FloodPolicy::Summarize => {
                self.tally.summarized += 1;
                self.touch(&view, &c);
                let Mode::Flood(reason) = self.mode else {
                    return;
                };
                let key = c
                    .key
                    .as_ref()
                    .and_then(|r| c.event.body.get(r.clone()))
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_owned);
                let oid = view.rel.oid;
                let pos = match self.summaries.iter().position(|s| s.view.rel.oid == oid) {
                    Some(p) => p,
                    None => {
                        self.summaries.push(Summary {
                            view: Arc::clone(&view),
                            first_index: c.index,
                            bulk: BulkSummary {
                                reason,
                                first_key: key.clone(),
                                ..Default::default()
                            },
                        });
                        self.summaries.len() - 1
                    }
                };
                let b = &mut self.summaries[pos].bulk;
                match c.event.op {
                    Op::Insert => b.inserts += 1,
                    Op::Update => b.updates += 1,
                    Op::Delete => b.deletes += 1,
                    Op::Truncate => b.truncates += 1,
                    Op::Message | Op::Bulk | Op::Read | Op::Control => {}
                }
                b.last_key = key;
            }
        }
    }
}

impl FloodGuard {
    /// Notes a skipped or summarized row's key for the backfill after the flood, when the
    /// table asks for one.
    fn touch(&mut self, view: &Arc<TableView>, c: &Candidate) {
        if !view.flood_backfill {
            return;
        }
        let key = c
            .key
            .as_ref()
            .and_then(|r| c.event.body.get(r.clone()))
            .and_then(|b| std::str::from_utf8(b).ok());
        let oid = view.rel.oid;
        let pos = match self.touched.iter().position(|(o, _)| *o == oid) {
            Some(p) => p,
            None => {
                let table = crate::source::setup::TableName {
                    schema: view.table.schema.clone(),
                    name: view.table.name.clone(),
                };
                self.touched.push((oid, Touched::new(table)));
                self.touched.len() - 1
            }
        };
        self.touched[pos].1.saw(key);
    }
}

#[derive(Clone, Copy)]
enum FloodReason {
    MaxChanges,
    Marker,
    Origin,
}

impl FloodReason {
    fn as_str(self) -> &'static str {
        match self {
            FloodReason::MaxChanges => "max_changes",
            FloodReason::Marker => "marker",
            FloodReason::Origin => "origin",
        }
    }
}
