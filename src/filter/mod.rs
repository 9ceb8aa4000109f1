//! The filter stage: decides, per change, whether it is published and how (columns, routing,
//! exchange), and, per transaction, whether it is a bulk "flood" (see [`flood`]).
//!
//! Rules are resolved once per relation, when pgoutput describes it: the table's include /
//! exclude verdict, its `[[filter.table]]` rule (first match wins), the column mask, the bound
//! predicate and routing template. After that, filtering a change is a few lookups and the
//! predicate's evaluation, with no allocation. A rule that cannot apply to the real table (an
//! ignored key column, a predicate or routing key naming a missing column) is a permanent
//! error: publishing anyway would leak a column or mis-route, skipping would lose data.
//!
//! Change ids still count every change pgoutput sent, so filtering never changes an id.

pub mod flood;
pub mod glob;
pub mod predicate;

use std::sync::Arc;

use crate::event::routing::{KeyRef, RouteVars, RoutingTemplate, partition_of};
use crate::event::{Event, Op, TableIdentity, TxContext};
use crate::pgoutput::{Datum, Relation, TupleData};
use crate::source::catalog::RelationFacts;
use glob::TablePattern;
use predicate::{Predicate, RowView};

/// A set of row operations, as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpSet(u8);

impl OpSet {
    pub const NONE: OpSet = OpSet(0);
    pub const ALL: OpSet = OpSet(0b1111);

    fn bit(op: Op) -> u8 {
        match op {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
            Op::Message | Op::Bulk => 0,
        }
    }

    /// Adds an operation by name; `None` for an unknown name.
    pub fn with(self, name: &str) -> Option<OpSet> {
        let op = match name {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "truncate" => Op::Truncate,
            _ => return None,
        };
        Some(OpSet(self.0 | Self::bit(op)))
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & Self::bit(op) != 0
    }

    pub fn union(self, other: OpSet) -> OpSet {
        OpSet(self.0 | other.0)
    }

    /// The names, in the order of the publication's `publish` option.
    pub fn names(self) -> Vec<&'static str> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .filter(|op| self.contains(*op))
            .map(Op::as_str)
            .collect()
    }
}

/// What happens to a flood transaction's changes of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodPolicy {
    /// Publish them like any other change (the default: the guard is opt-in).
    Publish,
    /// Publish nothing.
    Skip,
    /// Publish one `bulk` event per table instead.
    Summarize,
    /// Publish them to the reroute exchange / routing-key prefix.
    Reroute,
}

impl FloodPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FloodPolicy::Publish => "publish",
            FloodPolicy::Skip => "skip",
            FloodPolicy::Summarize => "summarize",
            FloodPolicy::Reroute => "reroute",
        }
    }
}

/// Where rerouted flood changes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reroute {
    /// `None`: the table's usual exchange.
    pub exchange: Option<String>,
    /// Prepended to the usual routing key.
    pub prefix: String,
}

/// `[flood]`: when a transaction is a flood.
#[derive(Clone, Debug, PartialEq)]
pub struct FloodSettings {
    /// More published changes than this in one transaction make it a flood.
    pub max_changes: Option<u64>,
    /// More published changes than this to one table (or the table's own `max_changes`).
    pub max_changes_per_table: Option<u64>,
    /// A transactional logical message with this prefix marks the transaction as a flood.
    pub marker_prefix: Option<String>,
    /// Transactions replayed from these replication origins are floods.
    pub origins: Vec<String>,
    /// The policy of tables whose rule does not set `flood_policy`.
    pub policy: FloodPolicy,
    pub reroute: Option<Reroute>,
}

/// One `[[filter.table]]` rule, validated.
#[derive(Clone, Debug)]
pub struct TableRule {
    pub pattern: TablePattern,
    pub ops: OpSet,
    /// Only these columns are published (key columns must be among them).
    pub columns: Option<Vec<String>>,
    /// These columns are never published (key columns must not be among them).
    pub ignore: Vec<String>,
    pub predicate: Option<Predicate>,
    pub skip_noop_updates: Option<bool>,
    pub exchange: Option<String>,
    pub routing_key: Option<RoutingTemplate>,
    pub partitions: Option<u32>,
    pub flood_policy: Option<FloodPolicy>,
    pub max_changes: Option<u64>,
}

/// `[filter]` and `[flood]`, validated.
#[derive(Clone, Debug)]
pub struct FilterSettings {
    /// Empty: every published table.
    pub include: Vec<TablePattern>,
    pub exclude: Vec<TablePattern>,
    pub rules: Vec<TableRule>,
    pub skip_noop_updates: bool,
    pub on_unmatched: OnUnmatched,
    pub flood: FloodSettings,
}

/// What `filter.on_unmatched` says to do with a change of a relation that no `include`
/// pattern matches and no `exclude` pattern names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnmatched {
    /// Drop it, but warn once per relation, count it and show it in `walrelay status`.
    Warn,
    /// Stop walrelay, naming the table: nothing may be dropped without a rule saying so.
    Stop,
}

/// How the configuration classifies a relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Included,
    /// An `exclude` pattern names it: dropped by an explicit rule.
    Excluded,
    /// `include` is not empty and matches neither its name nor (for a partition) its root's.
    Unmatched,
}

/// What happens to one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Publish,
    /// Dropped by an explicit rule of the configuration, counted by reason.
    Drop(Dropped),
    /// Of a relation the configuration does not mention (see [`OnUnmatched`]).
    Unmatched,
}

/// Why a change was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// An `exclude` pattern names the table.
    Excluded,
    /// The table's rule does not publish this operation.
    Op,
    /// The row predicate is false.
    Predicate,
    /// An update that changed none of the published columns.
    Noop,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Excluded => "excluded",
            Dropped::Op => "op",
            Dropped::Predicate => "predicate",
            Dropped::Noop => "noop",
        }
    }
}

/// A configured rule that cannot apply to the table as it really is. Permanent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter rule {rule:?} for {table}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub table: String,
    pub message: String,
}

impl FilterSettings {
    /// True when some flood count limit exists, so transactions must be counted before their
    /// changes are released.
    pub fn counts_changes(&self) -> bool {
        self.flood.max_changes.is_some()
            || self.flood.max_changes_per_table.is_some()
            || self.rules.iter().any(|r| r.max_changes.is_some())
    }

    /// True when the table passes `include` / `exclude`.
    pub fn included(&self, schema: &str, table: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(schema, table)))
            && !self.exclude.iter().any(|p| p.matches(schema, table))
    }

    /// The first rule matching the table.
    pub fn rule(&self, schema: &str, table: &str) -> Option<&TableRule> {
        self.rules.iter().find(|r| r.pattern.matches(schema, table))
    }

    /// Classifies a table by its names: the name events carry and, for a partition, the name
    /// PostgreSQL published it under. Either may be matched by `include` or `exclude`.
    pub fn verdict(&self, names: &[(&str, &str)]) -> Verdict {
        let any = |pats: &[TablePattern]| {
            pats.iter()
                .any(|p| names.iter().any(|(s, t)| p.matches(s, t)))
        };
        if any(&self.exclude) {
            Verdict::Excluded
        } else if self.include.is_empty() || any(&self.include) {
            Verdict::Included
        } else {
            Verdict::Unmatched
        }
    }

    /// Resolves everything about one relation: `facts` are the catalog's (`None`: the catalog
    /// no longer has the relation).
    pub fn view(
        &self,
        rel: &Arc<Relation>,
        facts: Option<&RelationFacts>,
        default_routing: &RoutingTemplate,
    ) -> Result<TableView, RuleError> {
        let table = TableIdentity::resolve(rel, facts);
        let mut names = vec![(table.schema.as_str(), table.name.as_str())];
        if let Some(p) = &table.partition {
            names.push((p.schema.as_str(), p.name.as_str()));
        }
        let verdict = self.verdict(&names);
        let rule = names.iter().find_map(|(s, t)| self.rule(s, t));
        let err = |message: String| RuleError {
            rule: rule.map_or_else(|| "(default)".to_owned(), |r| r.pattern.text.clone()),
            table: format!("{}.{}", table.schema, table.name),
            message,
        };
        let mut mask = None;
        if let Some(r) = rule {
            for name in r.ignore.iter().chain(r.columns.iter().flatten()) {
                if !rel.columns.iter().any(|c| c.name == *name) {
                    return Err(err(format!("no column {name:?}")));
                }
            }
            let keep: Vec<bool> = rel
                .columns
                .iter()
                .map(|c| {
                    !r.ignore.contains(&c.name)
                        && r.columns.as_ref().is_none_or(|cols| cols.contains(&c.name))
                })
                .collect();
            // The key identifies the row and must stay whole.
            if let Some((c, _)) = rel
                .columns
                .iter()
                .zip(&keep)
                .enumerate()
                .find(|(i, (_, k))| table.is_key(*i) && !**k)
                .map(|(_, ck)| ck)
            {
                return Err(err(format!(
                    "column {:?} is part of the row's key ({}), which identifies the row in every event, and cannot be left out",
                    c.name,
                    key_description(&table, rel)
                )));
            }
            if keep.iter().any(|k| !k) {
                mask = Some(keep);
            }
        }
        let predicate = rule
            .and_then(|r| r.predicate.as_ref())
            .map(|p| p.bind(rel).map_err(err))
            .transpose()?;
        let routing = rule
            .and_then(|r| r.routing_key.clone())
            .unwrap_or_else(|| default_routing.clone());
        for col in routing.key_columns() {
            let is_key = rel
                .columns
                .iter()
                .position(|c| c.name == col)
                .is_some_and(|i| table.is_key(i));
            if !is_key {
                return Err(err(format!(
                    "routing key uses {{key.{col}}}, but {col:?} is not a column of the row's key ({})",
                    key_description(&table, rel)
                )));
            }
        }
        let named = self
            .include
            .iter()
            .chain(self.rules.iter().map(|r| &r.pattern))
            .any(|p| p.exact() == Some((table.schema.as_str(), table.name.as_str())));
        let metric_table: Arc<str> = if named {
            Arc::from(format!("{}.{}", table.schema, table.name))
        } else {
            Arc::from("other")
        };
        Ok(TableView {
            metric_table,
            rel: Arc::clone(rel),
            table,
            verdict,
            ops: rule.map_or(OpSet::ALL, |r| r.ops),
            mask,
            predicate_on_deletes: predicate
                .as_ref()
                .is_some_and(Predicate::applies_to_deletes),
            predicate,
            skip_noop: rule
                .and_then(|r| r.skip_noop_updates)
                .unwrap_or(self.skip_noop_updates),
            exchange: rule.and_then(|r| r.exchange.as_deref()).map(Arc::from),
            routing,
            partitions: rule.and_then(|r| r.partitions),
            flood_policy: rule
                .and_then(|r| r.flood_policy)
                .unwrap_or(self.flood.policy),
            max_changes: rule
                .and_then(|r| r.max_changes)
                .or(self.flood.max_changes_per_table),
        })
    }
}

/// "the primary key (id)", "no key", for messages.
pub fn key_description(table: &TableIdentity, rel: &Relation) -> String {
    let Some(k) = &table.key else {
        return "the table has no key".to_owned();
    };
    let cols: Vec<&str> = k
        .columns
        .iter()
        .filter_map(|i| rel.columns.get(*i).map(|c| c.name.as_str()))
        .collect();
    let source = match k.source {
        crate::event::identity::KeyOrigin::Catalog(s) => s.as_str(),
        crate::event::identity::KeyOrigin::ReplicaIdentity => "replica identity",
    };
    format!("{source} {}", cols.join(", "))
}

/// Everything the filter decided about one relation, ready for the hot path.
#[derive(Debug)]
pub struct TableView {
    /// The relation as pgoutput described it (its columns, in the tuples' order).
    pub rel: Arc<Relation>,
    /// The name events carry and the row's key.
    pub table: TableIdentity,
    pub verdict: Verdict,
    pub ops: OpSet,
    /// Published columns by position; `None` when all are.
    pub mask: Option<Vec<bool>>,
    pub predicate: Option<Predicate>,
    /// The predicate decides deletes too ([`Predicate::applies_to_deletes`]); else they pass.
    pub predicate_on_deletes: bool,
    pub skip_noop: bool,
    pub exchange: Option<Arc<str>>,
    pub routing: RoutingTemplate,
    pub partitions: Option<u32>,
    pub flood_policy: FloodPolicy,
    /// Per-table flood threshold.
    pub max_changes: Option<u64>,
    /// The `table` label for metrics: `schema.table` when the config names the table exactly
    /// (in `include` or a rule), else `other`.
    pub metric_table: Arc<str>,
}

impl TableView {
    /// The routing key of one of this table's events; `key` is the tuple holding its key.
    pub fn route(&self, op: Op, key: Option<&TupleData<'_>>) -> String {
        let key = key.map(|tuple| KeyRef {
            rel: &self.rel,
            columns: self.table.key_columns(),
            tuple,
        });
        self.routing.render(&RouteVars {
            schema: &self.table.schema,
            table: &self.table.name,
            op: op.as_str(),
            key,
            partition: self.partitions.map(|n| partition_of(key, n)),
        })
    }

    /// An event of this table, routed by its rule. `key` is the tuple holding the row's key
    /// (`None` for truncates and bulk summaries, which go to partition 0).
    pub fn event(
        &self,
        op: Op,
        tx: &TxContext,
        id: String,
        body: Vec<u8>,
        key: Option<&TupleData<'_>>,
    ) -> Event {
        Event {
            id,
            op,
            schema: self.table.schema.clone(),
            table: self.table.name.clone(),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            routing_key: self.route(op, key),
            exchange: self.exchange.clone(),
            metric_table: Arc::clone(&self.metric_table),
            body,
        }
    }

    /// Decides what happens to a row change (or a truncate, with `row = None`).
    pub fn admit(&self, op: Op, row: Option<&RowView<'_>>) -> Admit {
        match self.verdict {
            Verdict::Included => {}
            Verdict::Excluded => return Admit::Drop(Dropped::Excluded),
            Verdict::Unmatched => return Admit::Unmatched,
        }
        if !self.ops.contains(op) {
            return Admit::Drop(Dropped::Op);
        }
        let Some(row) = row else {
            return Admit::Publish;
        };
        if let Some(p) = &self.predicate
            && (op != Op::Delete || self.predicate_on_deletes)
            && !p.eval(row)
        {
            return Admit::Drop(Dropped::Predicate);
        }
        if self.skip_noop && op == Op::Update && self.is_noop(row) {
            return Admit::Drop(Dropped::Noop);
        }
        Admit::Publish
    }

    /// An update is a no-op when every published column has the same text in the old and new
    /// image. Only a full old image (REPLICA IDENTITY FULL) can prove that; an unchanged TOAST
    /// value counts as unchanged.
    fn is_noop(&self, row: &RowView<'_>) -> bool {
        let (Some(old), Some(new)) = (row.old, row.new) else {
            return false;
        };
        old.columns
            .iter()
            .zip(&new.columns)
            .enumerate()
            .filter(|(i, _)| {
                self.mask
                    .as_ref()
                    .is_none_or(|m| m.get(*i).copied().unwrap_or(true))
            })
            .all(|(_, (o, n))| matches!(n, Datum::UnchangedToast) || o == n)
    }
}

#[cfg(test)]
mod tests;
