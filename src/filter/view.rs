//! A table as the filter sees it, resolved once per relation when pgoutput describes it: the
//! include/exclude verdict, the table rule, the column mask, the bound predicate and routing.
//! Filtering one change is then a few lookups on this view.

use std::sync::Arc;

use super::*;

impl FilterSettings {
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
        let mask = rule
            .map(|r| column_mask(r, rel, &table))
            .transpose()
            .map_err(err)?
            .flatten();
        let predicate = rule
            .and_then(|r| r.predicate.as_ref())
            .map(|p| p.bind(rel).map_err(err))
            .transpose()?;
        let routing = rule
            .and_then(|r| r.routing_key.clone())
            .unwrap_or_else(|| default_routing.clone());
        routing_by_key(&routing, rel, &table).map_err(err)?;
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
            flood_backfill: rule
                .and_then(|r| r.flood_then)
                .unwrap_or(self.flood.then_backfill),
            max_changes: rule
                .and_then(|r| r.max_changes)
                .or(self.flood.max_changes_per_table),
        })
    }
}

/// The columns a rule keeps (`None`: all of them). Every named column must exist, and the
/// key identifies the row and must stay whole.
fn column_mask(
    r: &TableRule,
    rel: &Relation,
    table: &TableIdentity,
) -> Result<Option<Vec<bool>>, String> {
    for name in r.ignore.iter().chain(r.columns.iter().flatten()) {
        if !rel.columns.iter().any(|c| c.name == *name) {
            return Err(format!("no column {name:?}"));
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
        return Err(format!(
            "column {:?} is part of the row's key ({}), which identifies the row in every event, and cannot be left out",
            c.name,
            key_description(table, rel)
        ));
    }
    Ok(keep.iter().any(|k| !k).then_some(keep))
}

/// `{key.<col>}` in a routing key must name a column of the row's key.
fn routing_by_key(
    routing: &RoutingTemplate,
    rel: &Relation,
    table: &TableIdentity,
) -> Result<(), String> {
    for col in routing.key_columns() {
        let is_key = rel
            .columns
            .iter()
            .position(|c| c.name == col)
            .is_some_and(|i| table.is_key(i));
        if !is_key {
            return Err(format!(
                "routing key uses {{key.{col}}}, but {col:?} is not a column of the row's key ({})",
                key_description(table, rel)
            ));
        }
    }
    Ok(())
}

/// "the primary key (id)", "no key", for messages.
pub(crate) fn key_description(table: &TableIdentity, rel: &Relation) -> String {
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
    /// Backfill the rows a skipped or summarized flood touched, once it commits.
    pub flood_backfill: bool,
    /// Per-table flood threshold.
    pub max_changes: Option<u64>,
    /// The `table` label for metrics: `schema.table` when the config names the table exactly
    /// (in `include` or a rule), else `other`.
    pub metric_table: Arc<str>,
}

impl TableView {
    /// The routing key of one of this table's events; `key` is the tuple holding its key.
    pub fn route(&self, op: Op, key: Option<&TupleData<'_>>) -> String {
        self.route_and_hash(op, key).0
    }

    /// The routing key and the key's hash (`None` without a key), computed once: the super
    /// stream sink picks partitions by the same hash as `{partition}`.
    fn route_and_hash(&self, op: Op, key: Option<&TupleData<'_>>) -> (String, Option<u64>) {
        let key = key.map(|tuple| KeyRef {
            rel: &self.rel,
            columns: self.table.key_columns(),
            tuple,
        });
        let hash = key.map(key_hash);
        let routing_key = self.routing.render(&RouteVars {
            schema: &self.table.schema,
            table: &self.table.name,
            op: op.as_str(),
            key,
            partition: self
                .partitions
                .map(|n| hash.map_or(0, |h| partition_by_hash(h, n))),
        });
        (routing_key, hash)
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
        let (routing_key, key_hash) = self.route_and_hash(op, key);
        Event {
            id,
            op,
            schema: self.table.schema.clone(),
            table: self.table.name.clone(),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            routing_key,
            key_hash,
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
