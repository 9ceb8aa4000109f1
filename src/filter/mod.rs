//! The filter stage: decides, per change, whether it is published and how (columns, routing,
//! exchange), and, per transaction, whether it is a bulk "flood" (the rules here; the guard is `transform::flood`).
//!
//! Rules are resolved once per relation, when pgoutput describes it: the table's include /
//! exclude verdict, its `[[filter.table]]` rule (first match wins), the column mask, the bound
//! predicate and routing template. After that, filtering a change is a few lookups and the
//! predicate's evaluation, with no allocation. A rule that cannot apply to the real table (an
//! ignored key column, a predicate or routing key naming a missing column) is a permanent
//! error: publishing anyway would leak a column or mis-route, skipping would lose data.
//!
//! Change ids still count every change pgoutput sent, so filtering never changes an id.

pub(crate) mod glob;
pub(crate) mod predicate;
mod view;

pub(crate) use view::{TableView, key_description};

use crate::event::routing::{KeyRef, RouteVars, RoutingTemplate, key_hash, partition_by_hash};
use crate::event::{Event, Op, TableIdentity, TxContext};
use crate::pgoutput::{Datum, Relation, TupleData};
use crate::schema::RelationFacts;
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
            Op::Message | Op::Bulk | Op::Read | Op::Control => 0,
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

    /// True when `op` passes. A `read` always does: the backfill request is the choice.
    pub fn contains(self, op: Op) -> bool {
        op == Op::Read || self.0 & Self::bit(op) != 0
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
    /// `flood.then = "backfill"`: after a skipped or summarized flood commits, the rows it
    /// touched are backfilled (tables whose rule does not set `flood_then`).
    pub then_backfill: bool,
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
    /// The table's `flood_then` (`Some(true)`: "backfill").
    pub flood_then: Option<bool>,
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
}

#[cfg(test)]
pub(crate) mod tests;
