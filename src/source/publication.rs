//! The publication: created from the filter's included tables when missing, checked against
//! the filter when it exists, and the filter rules checked against the published tables'
//! real columns before streaming starts, so a rule that would leak or mis-route fails at
//! start, naming the table and column.

use std::sync::Arc;

use tracing::{info, warn};

use super::conn::Connection;
use super::error::SourceError;
pub use super::published::{Published, published_relations, relations_by_oid};
use super::setup::{TableName, quote_ident, quote_literal};
use crate::event::routing::RoutingTemplate;
use crate::filter::{FilterSettings, OpSet, Verdict};

/// User tables (ordinary and partitioned) outside the system schemas, with `relpersistence`.
const USER_TABLES: &str = "SELECT n.nspname, c.relname, c.relpersistence FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     ORDER BY 1, 2";

fn pairs(rows: Vec<Vec<Option<String>>>) -> Vec<TableName> {
    rows.into_iter()
        .filter_map(|r| {
            Some(TableName {
                schema: r.first()?.clone()?,
                name: r.get(1)?.clone()?,
            })
        })
        .collect()
}

/// Makes sure the publication exists. When missing, creates it for exactly the tables the
/// filter includes, publishing only the operations some rule wants.
pub async fn ensure_publication(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
) -> Result<(), SourceError> {
    let exists = conn
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    if exists.is_empty() {
        return create(conn, publication, filter).await;
    }
    Ok(())
}

/// The publication walrelay would create: its tables (`filter.include` minus `exclude`, logged
/// tables only) and the `CREATE PUBLICATION` statement. Errors say why it cannot be planned.
pub struct Plan {
    pub tables: Vec<TableName>,
    pub ops: OpSet,
    pub sql: String,
    /// Included tables left out because they are UNLOGGED (PostgreSQL refuses them).
    pub unlogged: Vec<TableName>,
}

/// Plans the publication walrelay creates when it is missing (nothing is changed).
pub async fn plan(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
) -> Result<Plan, SourceError> {
    if filter.include.is_empty() {
        return Err(SourceError::Setup(format!(
            "publication {publication:?} does not exist and filter.include is empty, so walrelay cannot create it"
        )));
    }
    let rows = conn.simple_query(USER_TABLES).await?;
    let unlogged: Vec<TableName> = pairs(
        rows.iter()
            .filter(|r| r.get(2).cloned().flatten().as_deref() != Some("p"))
            .cloned()
            .collect(),
    );
    let unlogged: Vec<TableName> = unlogged
        .into_iter()
        .filter(|t| filter.included(&t.schema, &t.name))
        .collect();
    let all = pairs(rows);
    // PostgreSQL never writes unlogged tables to the WAL and refuses them in a publication.
    for t in &unlogged {
        let exact = filter
            .include
            .iter()
            .any(|p| p.exact() == Some((t.schema.as_str(), t.name.as_str())));
        if exact {
            return Err(SourceError::Setup(format!(
                "cannot create publication {publication:?}: table {t} (filter.include) is UNLOGGED, and PostgreSQL never \
                 replicates unlogged tables. ALTER TABLE {} SET LOGGED, or remove it from filter.include",
                t.quoted()
            )));
        }
    }
    let all: Vec<TableName> = all.into_iter().filter(|t| !unlogged.contains(t)).collect();
    for p in &filter.include {
        if let Some((schema, name)) = p.exact()
            && !all.iter().any(|t| t.schema == schema && t.name == name)
        {
            return Err(SourceError::Setup(format!(
                "cannot create publication {publication:?}: table {schema}.{name} (filter.include) does not exist \
                 (names are case-sensitive; check the spelling)"
            )));
        }
    }
    let tables: Vec<TableName> = all
        .into_iter()
        .filter(|t| filter.included(&t.schema, &t.name))
        .collect();
    if tables.is_empty() {
        return Err(SourceError::Setup(format!(
            "cannot create publication {publication:?}: filter.include matches no table"
        )));
    }
    let ops = tables.iter().fold(OpSet::NONE, |acc, t| {
        acc.union(
            filter
                .rule(&t.schema, &t.name)
                .map_or(OpSet::ALL, |r| r.ops),
        )
    });
    let list: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {}, publish_via_partition_root = true)",
        quote_ident(publication),
        list.join(", "),
        quote_literal(&ops.names().join(", "))
    );
    Ok(Plan {
        tables,
        ops,
        sql,
        unlogged,
    })
}

/// What `run` says when the role may not create the publication: the owner's statement.
pub fn may_not_create(publication: &str, why: &str, sql: &str) -> String {
    format!(
        "publication {publication:?} does not exist and this role may not create it ({why}). \
         Ask the tables' owner to run: {sql}"
    )
}

async fn create(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
) -> Result<(), SourceError> {
    let Plan {
        tables,
        ops,
        sql,
        unlogged,
    } = plan(conn, publication, filter).await?;
    for t in &unlogged {
        warn!(publication, table = %t, "table is UNLOGGED: PostgreSQL never replicates it, so it is left out of the publication");
    }
    let list = tables;
    match conn.simple_query(&sql).await {
        Ok(_) => {
            info!(publication, tables = list.len(), publish = %ops.names().join(","), "created publication");
            Ok(())
        }
        Err(SourceError::Server(e)) if e.code == super::sqlstate::INSUFFICIENT_PRIVILEGE => Err(
            SourceError::Setup(may_not_create(publication, &e.message, &sql)),
        ),
        Err(e) => Err(e),
    }
}

/// Why the start-up check of the filter refused: the server failed, or a rule cannot apply
/// to a table it meets (the filter's fault, not PostgreSQL's).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Rule(#[from] crate::filter::RuleError),
}

/// Resolves the filter against every published table's real columns, key and partition root,
/// exactly as it will be resolved when pgoutput describes the table, so a bad rule stops the
/// start instead of the stream. Says what happens to published tables the filter drops, and
/// refuses a table that `filter.include` names exactly but the publication does not hold.
pub async fn check_rules(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
    routing: &RoutingTemplate,
) -> Result<(), CheckError> {
    let published = published_relations(conn, publication).await?;
    let via_leaf = published
        .iter()
        .any(|p| p.facts.as_ref().is_some_and(|f| f.root.is_some()));
    if via_leaf {
        info!(
            publication,
            "the publication publishes partitions under their own names (publish_via_partition_root is off): \
              walrelay names their changes after each partition's root, read from the catalog, and puts the partition in the event's `partition` field"
        );
    }
    let mut names: Vec<(String, String)> = Vec::new();
    for p in published {
        let view = filter.view(&Arc::new(p.rel), p.facts.as_ref(), routing)?;
        let t = &view.table;
        let name = format!("{}.{}", view.rel.schema, view.rel.name);
        match view.verdict {
            Verdict::Included => {}
            Verdict::Excluded => warn!(publication, table = %name,
                "table is published but filter.exclude names it: its changes are decoded and dropped (remove it from the publication to save the work)"),
            Verdict::Unmatched => warn!(publication, table = %name,
                "table is published but no filter.include pattern matches it: its changes will be dropped with a warning and counted in walrelay_events_unmatched_total \
                 (add it to filter.include or filter.exclude; filter.on_unmatched = \"stop\" stops instead)"),
        }
        names.push((t.schema.clone(), t.name.clone()));
        if let Some(leaf) = &t.partition {
            names.push((leaf.schema.clone(), leaf.name.clone()));
        }
    }
    for p in &filter.include {
        if names.iter().any(|(s, t)| p.matches(s, t)) {
            continue;
        }
        // A table named exactly but not published would silently never stream: refuse.
        if let Some((schema, name)) = p.exact() {
            let table = TableName {
                schema: schema.to_owned(),
                name: name.to_owned(),
            };
            let exists = !conn
                .simple_query(&format!(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = {} AND c.relname = {}",
                    quote_literal(schema),
                    quote_literal(name)
                ))
                .await?
                .is_empty();
            if !exists {
                return Err(CheckError::Source(SourceError::Setup(format!(
                    "filter.include names {}, which does not exist in this database \
                     (names are case-sensitive; check the spelling, or remove it from filter.include)",
                    p.text
                ))));
            }
            return Err(CheckError::Source(SourceError::Setup(format!(
                "filter.include names {}, which is not in publication {publication:?}: \
                 ALTER PUBLICATION {} ADD TABLE {} (or remove it from filter.include)",
                p.text,
                quote_ident(publication),
                table.quoted()
            ))));
        }
        warn!(publication, pattern = %p.text, "filter.include matches no table of the existing publication: nothing will be streamed for it");
    }
    Ok(())
}
