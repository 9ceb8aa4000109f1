//! The publication: created from the filter's included tables when missing, checked against
//! the filter when it exists, and the filter rules checked against the published tables'
//! real columns before streaming starts, so a rule that would leak or mis-route fails at
//! start, naming the table and column.

use std::sync::Arc;

use tracing::{info, warn};

use super::catalog::{self, RelationFacts};
use super::conn::Connection;
use super::error::SourceError;
use super::setup::{self, TableName, quote_ident, quote_literal};
use crate::event::routing::RoutingTemplate;
use crate::filter::{FilterSettings, OpSet, Verdict};
use crate::pgoutput::{Column, Relation, ReplicaIdentity};

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
        Err(SourceError::Server(e)) if e.code == "42501" => Err(SourceError::Setup(
            may_not_create(publication, &e.message, &sql),
        )),
        Err(e) => Err(e),
    }
}

/// A relation as pgoutput will describe it (the published columns, in table order, flagged
/// as replica identity the way pgoutput flags them), with the catalog's facts about it.
pub struct Published {
    pub rel: Relation,
    pub facts: Option<RelationFacts>,
    /// The publication's row filter (PostgreSQL 15+), as the server prints it.
    pub row_filter: Option<String>,
    /// True when a column list limits the published columns (PostgreSQL 15+).
    pub column_list: bool,
    /// A partitioned table (published under its own name, via `publish_via_partition_root`).
    pub partitioned: bool,
}

/// Every relation the publication makes pgoutput send, as pgoutput will describe it.
pub async fn published_relations(
    conn: &mut Connection,
    publication: &str,
) -> Result<Vec<Published>, SourceError> {
    let v15 = setup::server_version(conn).await? >= 150_000;
    let (attnames, rowfilter) = if v15 {
        ("pt.attnames::text", "pt.rowfilter")
    } else {
        ("NULL", "NULL")
    };
    let source = format!(
        "SELECT c.oid, {attnames}, {rowfilter} FROM pg_publication_tables pt \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         WHERE pt.pubname = {}",
        quote_literal(publication)
    );
    describe_relations(conn, &source).await
}

/// The relations with these OIDs, described as a publication of all their columns would.
pub async fn relations_by_oid(
    conn: &mut Connection,
    oids: &[u32],
) -> Result<Vec<Published>, SourceError> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let source = format!(
        "SELECT c.oid, NULL, NULL FROM pg_class c WHERE c.oid IN ({})",
        catalog::oid_list(oids)
    );
    describe_relations(conn, &source).await
}

/// Describes the relations `source` lists as `(oid, attnames, rowfilter)` rows.
async fn describe_relations(
    conn: &mut Connection,
    source: &str,
) -> Result<Vec<Published>, SourceError> {
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, c.relreplident, s.attnames, s.rowfilter, \
           (SELECT count(*) FROM pg_attribute x WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped), \
           c.relkind \
         FROM ({source}) AS s(oid, attnames, rowfilter) \
         JOIN pg_class c ON c.oid = s.oid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         ORDER BY 2, 3"
    );
    let tables = conn.simple_query(&sql).await?;
    let oids: Vec<u32> = tables
        .iter()
        .filter_map(|t| t.first().cloned().flatten()?.parse().ok())
        .collect();
    let mut facts = catalog::relations_facts(conn, &oids).await?;
    // Every relation's columns in one query: (relation, name, type, replica identity flag as
    // pgoutput sets it: every column under FULL, none under NOTHING, else the key's).
    let list = catalog::oid_list(&oids);
    let column_rows = conn
        .simple_query(&format!(
            "SELECT a.attrelid, a.attname, a.atttypid::text, \
               CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false ELSE \
                 EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND a.attnum = ANY(i.indkey) \
                   AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END) END \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum"
        ))
        .await?;
    let mut columns_of: std::collections::HashMap<u32, Vec<(String, u32, bool)>> =
        std::collections::HashMap::new();
    for r in column_rows {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let Ok(rel) = get(0).parse::<u32>() else {
            continue;
        };
        columns_of.entry(rel).or_default().push((
            get(1),
            get(2).parse().unwrap_or(0),
            get(3) == "t",
        ));
    }
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let get = |i: usize| t.get(i).cloned().flatten().unwrap_or_default();
        let oid: u32 = get(0).parse().unwrap_or(0);
        let replident = get(3).bytes().next().unwrap_or(b'd');
        // `{a,b}` as PostgreSQL prints a name[]; NULL before 15 (every column is published).
        let published: Option<Vec<String>> =
            t.get(4).cloned().flatten().map(|a| parse_name_array(&a));
        let all_columns: usize = get(6).parse().unwrap_or(0);
        let columns: Vec<Column> = columns_of
            .remove(&oid)
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _, _)| published.as_ref().is_none_or(|p| p.contains(name)))
            .map(|(name, type_oid, is_key)| Column {
                name,
                is_key,
                type_oid,
                type_modifier: -1,
            })
            .collect();
        let column_list = published.as_ref().is_some_and(|p| p.len() < all_columns);
        out.push(Published {
            rel: Relation {
                oid,
                schema: get(1),
                name: get(2),
                replica_identity: ReplicaIdentity::from_byte(replident)
                    .unwrap_or(ReplicaIdentity::Default),
                columns,
            },
            facts: facts.remove(&oid),
            row_filter: t.get(5).cloned().flatten(),
            column_list,
            partitioned: get(7) == "p",
        });
    }
    Ok(out)
}

/// Parses PostgreSQL's text form of a `name[]`: `{a,"b c","d\"e"}`.
fn parse_name_array(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => cur.extend(chars.next()),
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !inner.is_empty() {
        out.push(cur);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_arrays() {
        assert_eq!(parse_name_array("{a,b}"), ["a", "b"]);
        assert_eq!(parse_name_array("{}"), Vec::<String>::new());
        assert_eq!(
            parse_name_array(r#"{"a b","c,d","e\"f",g}"#),
            ["a b", "c,d", "e\"f", "g"]
        );
    }
}
