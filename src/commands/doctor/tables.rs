//! The doctor's checks of the publication and of every table it streams: the filter's verdict,
//! partitions, column lists, row filters, UNLOGGED tables, replica identity, TOAST and keys —
//! resolved exactly as the replication task will resolve them.

use std::sync::Arc;

use super::postgres::{col, fail, ok, one, warn};
use super::{Finding, Streamed};
use crate::config::Settings;
use crate::filter::{FilterSettings, TableView, Verdict};
use crate::pgoutput::{Relation, ReplicaIdentity};
use crate::source::publication::{self, Published};
use crate::source::setup::quote_literal;
use crate::source::{Connection, SourceError};

/// Checks the publication (or the one walrelay would create) and each of its tables.
pub(super) async fn check(
    settings: &Settings,
    c: &mut Connection,
    out: &mut Vec<Finding>,
) -> Result<Vec<Streamed>, SourceError> {
    let name = &settings.source.publication;
    let exists = !c
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?
        .is_empty();
    let filter = &settings.filter;
    let mut streamed: Vec<Streamed> = Vec::new();
    let mut rule_error = None;
    for p in relations(c, name, exists, filter).await? {
        let rel = Arc::new(p.rel.clone());
        match filter.view(&rel, p.facts.as_ref(), &settings.sink.routing_key) {
            Ok(view) => {
                if let Some(s) = table(c, &p, &rel, &view, out).await?
                    && !streamed
                        .iter()
                        .any(|t| (&t.schema, &t.name) == (&s.schema, &s.name))
                {
                    streamed.push(s);
                }
            }
            Err(e) => {
                rule_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = rule_error {
        out.push(fail(e));
    }
    if exists {
        out.push(ok(format!(
            "publication {name} exists ({} streamed)",
            tables(streamed.len())
        )));
        for p in &filter.include {
            if p.exact().is_none() && !streamed.iter().any(|t| p.matches(&t.schema, &t.name)) {
                out.push(warn(format!(
                    "filter.include {:?} matches no table of publication {name}",
                    p.text
                )));
            }
        }
        // The same checks `run` makes at start (an exactly named table missing from the
        // publication, a rule that cannot apply), with the same remedy.
        if let Err(e) = publication::check_rules(c, name, filter, &settings.sink.routing_key).await
            && !matches!(e, publication::CheckError::Rule(_))
        {
            out.push(fail(e.to_string()));
        }
    } else {
        match publication::plan(c, name, filter).await {
            Err(e) => out.push(fail(e.to_string())),
            Ok(plan) => match create_refusal(c, &plan).await? {
                Some(why) => out.push(fail(publication::may_not_create(name, &why, &plan.sql))),
                None => out.push(ok(format!(
                    "publication {name} will be created for {}",
                    tables(plan.tables.len())
                ))),
            },
        }
    }
    Ok(streamed)
}

fn tables(n: usize) -> String {
    if n == 1 {
        "1 table".to_owned()
    } else {
        format!("{n} tables")
    }
}

/// The relations pgoutput will describe: the publication's, or those walrelay would put in
/// the one it creates (partitions of an included root are published through the root).
async fn relations(
    c: &mut Connection,
    publication: &str,
    exists: bool,
    filter: &FilterSettings,
) -> Result<Vec<Published>, SourceError> {
    if exists {
        return publication::published_relations(c, publication).await;
    }
    let rows = c
        .simple_query(
            "SELECT c.oid, n.nspname, c.relname, rn.nspname, r.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) \
             LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_%'",
        )
        .await?;
    let oids: Vec<u32> = rows
        .iter()
        .filter(|r| {
            let own = filter.included(&col(r, 1), &col(r, 2));
            let root_included =
                r.get(3).cloned().flatten().is_some() && filter.included(&col(r, 3), &col(r, 4));
            own && !root_included
        })
        .filter_map(|r| col(r, 0).parse().ok())
        .collect();
    publication::relations_by_oid(c, &oids).await
}

/// The findings for one published relation; the table it streams as, when it is streamed.
async fn table(
    c: &mut Connection,
    p: &Published,
    rel: &Relation,
    view: &TableView,
    out: &mut Vec<Finding>,
) -> Result<Option<Streamed>, SourceError> {
    let leaf = format!("{}.{}", rel.schema, rel.name);
    match view.verdict {
        Verdict::Included => {}
        Verdict::Excluded => {
            out.push(warn(format!(
                "{leaf} is published but filter.exclude names it: its changes are decoded and dropped"
            )));
            return Ok(None);
        }
        Verdict::Unmatched => {
            out.push(warn(format!(
                "{leaf} is published but no filter.include pattern matches it: its changes will be dropped \
                 with a warning and counted in walrelay_events_unmatched_total (add it to filter.include or \
                 filter.exclude; filter.on_unmatched = \"stop\" stops instead)"
            )));
            return Ok(None);
        }
    }
    let t = &view.table;
    let table = format!("{}.{}", t.schema, t.name);
    if p.partitioned {
        out.push(ok(format!(
            "{table} is partitioned and published under its own name (publish_via_partition_root): \
             changes of every partition are named {table}, with partition = null"
        )));
    }
    if t.partition.is_some() {
        out.push(ok(format!(
            "{leaf} is a partition of {table}: its changes are named {table}, with partition = {leaf}"
        )));
    }
    if p.facts.as_ref().is_some_and(|f| f.unlogged) {
        out.push(warn(format!(
            "{leaf} is UNLOGGED: PostgreSQL never writes its changes to the WAL, so none of them will stream \
             (ALTER TABLE {leaf} SET LOGGED to stream it)"
        )));
    }
    if p.column_list {
        let cols: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        out.push(ok(format!(
            "{leaf}: the publication's column list publishes only ({})",
            cols.join(", ")
        )));
    }
    if let Some(f) = &p.row_filter {
        out.push(ok(format!(
            "{leaf}: the publication's row filter publishes only rows WHERE {f}"
        )));
    }
    identity(p, rel, view, &leaf, out);
    if rel.replica_identity != ReplicaIdentity::Full {
        toast(c, rel, view, &leaf, out).await?;
    }
    match &t.key {
        Some(_) => out.push(ok(format!(
            "{table}: key = {}",
            crate::filter::key_description(t, rel)
        ))),
        None => out.push(warn(format!(
            "{table} has no key (no primary key, replica identity index or single unique NOT NULL index among the published columns): \
             its events carry \"key\": null and all go to partition 0"
        ))),
    }
    Ok(Some(Streamed {
        schema: t.schema.clone(),
        name: t.name.clone(),
        ops: view.ops.names(),
        key_columns: t
            .key_columns()
            .iter()
            .filter_map(|i| rel.columns.get(*i).map(|c| c.name.clone()))
            .collect(),
    }))
}

/// REPLICA IDENTITY against the operations published: a table PostgreSQL would refuse to
/// update once published is a failure, not a warning.
fn identity(p: &Published, rel: &Relation, view: &TableView, leaf: &str, out: &mut Vec<Finding>) {
    let ops = view.ops;
    let writes_old =
        ops.contains(crate::event::Op::Update) || ops.contains(crate::event::Op::Delete);
    let has_identity = rel.columns.iter().any(|c| c.is_key);
    match rel.replica_identity {
        ReplicaIdentity::Default if !has_identity && writes_old && !p.partitioned => {
            out.push(fail(format!(
                "{leaf} has no primary key and REPLICA IDENTITY DEFAULT: once published, UPDATE and DELETE on it fail in PostgreSQL. Add a primary key or ALTER TABLE {leaf} REPLICA IDENTITY FULL"
            )))
        }
        ReplicaIdentity::Nothing => out.push(warn(format!(
            "{leaf} has REPLICA IDENTITY NOTHING: updates and deletes fail in PostgreSQL while it is published for them; inserts stream"
        ))),
        ReplicaIdentity::Full => {
            out.push(ok(format!("{leaf}: REPLICA IDENTITY FULL (old rows complete)")))
        }
        _ => {}
    }
}

/// Columns that PostgreSQL may store out of line (TOAST) and consumers see: an update that
/// leaves such a value alone lists the column in `unchanged_toast` instead of sending it.
/// Any `text`, `jsonb` or `bytea` column qualifies in principle, so naming them all on every
/// table was noise (issue 28). A warning only where the table already stores values out of
/// line (its TOAST relation holds pages); elsewhere one line of information per table.
async fn toast(
    c: &mut Connection,
    rel: &Relation,
    view: &TableView,
    leaf: &str,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT attname FROM pg_attribute WHERE attrelid = {} AND attnum > 0 \
             AND NOT attisdropped AND attstorage IN ('x', 'e') ORDER BY attnum",
            rel.oid
        ))
        .await?;
    // Only columns that are published and not hidden by a rule matter to consumers.
    let toast: Vec<String> = rows
        .into_iter()
        .map(|r| col(&r, 0))
        .filter(|name| {
            rel.columns.iter().enumerate().any(|(i, c)| {
                c.name == *name
                    && view
                        .mask
                        .as_ref()
                        .is_none_or(|m| m.get(i).copied().unwrap_or(true))
            })
        })
        .collect();
    if toast.is_empty() {
        return Ok(());
    }
    // A partitioned table stores nothing itself: its partitions' TOAST relations count
    // (`pg_partition_tree` lists nothing for a table that is not partitioned: hence the OR).
    let stored = one(
        c,
        &format!(
            "SELECT coalesce(sum(pg_relation_size(c.reltoastrelid)), 0) > 0 FROM pg_class c \
             WHERE c.reltoastrelid <> 0 \
               AND (c.oid = {o} OR c.oid IN (SELECT relid FROM pg_partition_tree({o})))",
            o = rel.oid
        ),
    )
    .await?;
    let columns = toast.join(", ");
    if col(&stored, 0) == "t" {
        out.push(warn(format!(
            "{leaf} stores values out of line (TOAST): an update that leaves {columns} alone lists them in unchanged_toast and sends no value; \
             use REPLICA IDENTITY FULL if consumers need them (docs/events.md, unchanged_toast)"
        )));
    } else {
        out.push(ok(format!(
            "{leaf}: no value is stored out of line today; should one of {columns} ever hold more than about 2 kB, \
             an update that leaves it alone lists it in unchanged_toast"
        )));
    }
    Ok(())
}

/// Why this role could not run the plan's `CREATE PUBLICATION` (it needs `CREATE` on the
/// database and ownership of every table, or superuser), or `None` when it can.
async fn create_refusal(
    c: &mut Connection,
    plan: &publication::Plan,
) -> Result<Option<String>, SourceError> {
    let r = one(
        c,
        "SELECT r.rolsuper, has_database_privilege(current_database(), 'CREATE'), current_database() \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .await?;
    if col(&r, 0) == "t" {
        return Ok(None);
    }
    let mut why = Vec::new();
    if col(&r, 1) != "t" {
        why.push(format!("it lacks CREATE on database {}", col(&r, 2)));
    }
    let names: Vec<String> = plan
        .tables
        .iter()
        .map(|t| format!("({}, {})", quote_literal(&t.schema), quote_literal(&t.name)))
        .collect();
    let rows = c
        .simple_query(&format!(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (n.nspname, c.relname) IN ({}) AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1",
            names.join(", ")
        ))
        .await?;
    let foreign: Vec<String> = rows.into_iter().map(|r| col(&r, 0)).collect();
    if !foreign.is_empty() {
        why.push(format!("it does not own {}", foreign.join(", ")));
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}
