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

use crate::event::routing::{RouteVars, RoutingTemplate, partition_of};
use crate::event::{Event, Op, TxContext};
use crate::pgoutput::{Datum, Relation, TupleData};
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
    pub flood: FloodSettings,
}

/// Why a change was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The table is not included, or is excluded.
    Table,
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
            Dropped::Table => "table",
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

    /// Resolves everything about one relation.
    pub fn view(
        &self,
        rel: &Arc<Relation>,
        default_routing: &RoutingTemplate,
    ) -> Result<TableView, RuleError> {
        let included = self.included(&rel.schema, &rel.name);
        let rule = self.rule(&rel.schema, &rel.name);
        let err = |message: String| RuleError {
            rule: rule.map_or_else(|| "(default)".to_owned(), |r| r.pattern.text.clone()),
            table: format!("{}.{}", rel.schema, rel.name),
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
            // Under REPLICA IDENTITY FULL every column is "key", and hiding one just hides it
            // from `key` too; otherwise the key identifies the row and must stay whole.
            let identity_is_row = rel.replica_identity == crate::pgoutput::ReplicaIdentity::Full;
            if let Some(c) = rel
                .columns
                .iter()
                .zip(&keep)
                .find(|(c, k)| c.is_key && !**k && !identity_is_row)
            {
                return Err(err(format!(
                    "column {:?} is part of the replica identity (the event key) and cannot be left out",
                    c.0.name
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
            if !rel.columns.iter().any(|c| c.name == col && c.is_key) {
                return Err(err(format!(
                    "routing key uses {{key.{col}}}, but {col:?} is not a replica identity column"
                )));
            }
        }
        let named = self
            .include
            .iter()
            .chain(self.rules.iter().map(|r| &r.pattern))
            .any(|p| p.exact() == Some((rel.schema.as_str(), rel.name.as_str())));
        let metric_table: Arc<str> = if named {
            Arc::from(format!("{}.{}", rel.schema, rel.name))
        } else {
            Arc::from("other")
        };
        Ok(TableView {
            metric_table,
            rel: Arc::clone(rel),
            included,
            ops: rule.map_or(OpSet::ALL, |r| r.ops),
            mask,
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

/// Everything the filter decided about one relation, ready for the hot path.
#[derive(Debug)]
pub struct TableView {
    pub rel: Arc<Relation>,
    pub included: bool,
    pub ops: OpSet,
    /// Published columns by position; `None` when all are.
    pub mask: Option<Vec<bool>>,
    pub predicate: Option<Predicate>,
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
        let key = key.map(|t| (&*self.rel, t));
        self.routing.render(&RouteVars {
            schema: &self.rel.schema,
            table: &self.rel.name,
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
            schema: self.rel.schema.clone(),
            table: self.rel.name.clone(),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            routing_key: self.route(op, key),
            exchange: self.exchange.clone(),
            metric_table: Arc::clone(&self.metric_table),
            body,
        }
    }

    /// Decides whether a row change (or truncate, with `row = None`) is published.
    pub fn admit(&self, op: Op, row: Option<&RowView<'_>>) -> Result<(), Dropped> {
        if !self.included {
            return Err(Dropped::Table);
        }
        if !self.ops.contains(op) {
            return Err(Dropped::Op);
        }
        let Some(row) = row else {
            return Ok(());
        };
        if let Some(p) = &self.predicate
            && !p.eval(row)
        {
            return Err(Dropped::Predicate);
        }
        if self.skip_noop && op == Op::Update && self.is_noop(row) {
            return Err(Dropped::Noop);
        }
        Ok(())
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
