//! The publication: created from the filter's included tables when missing, checked against
//! the filter when it exists, and the filter rules checked against the published tables'
//! real columns before streaming starts, so a rule that would leak or mis-route fails at
//! start, naming the table and column.

use std::sync::Arc;

use tracing::{info, warn};

use super::conn::Connection;
use super::error::SourceError;
use super::setup::{TableName, quote_ident, quote_literal};
use crate::event::routing::RoutingTemplate;
use crate::filter::{FilterSettings, OpSet};
use crate::pgoutput::{Column, Relation, ReplicaIdentity};

/// User tables (ordinary and partitioned) outside the system schemas.
const USER_TABLES: &str = "SELECT n.nspname, c.relname FROM pg_class c \
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
    let published = pairs(
        conn.simple_query(&format!(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {} ORDER BY 1, 2",
            quote_literal(publication)
        ))
        .await?,
    );
    for t in &published {
        if !filter.included(&t.schema, &t.name) {
            warn!(publication, table = %t, "table is published but the filter excludes it: its changes are decoded and dropped (remove it from the publication to save the work)");
        }
    }
    for p in &filter.include {
        if published.iter().any(|t| p.matches(&t.schema, &t.name)) {
            continue;
        }
        // A table named exactly but not published would silently never stream: refuse.
        if p.exact().is_some() {
            return Err(SourceError::Setup(format!(
                "filter.include names {}, which is not in publication {publication:?}:                  ALTER PUBLICATION {} ADD TABLE {} (or remove it from filter.include)",
                p.text,
                quote_ident(publication),
                p.text
            )));
        }
        warn!(publication, pattern = %p.text, "filter.include matches no table of the existing publication: nothing will be streamed for it");
    }
    Ok(())
}

async fn create(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
) -> Result<(), SourceError> {
    if filter.include.is_empty() {
        return Err(SourceError::Setup(format!(
            "publication {publication:?} does not exist and filter.include is empty, so walrelay cannot create it"
        )));
    }
    let all = pairs(conn.simple_query(USER_TABLES).await?);
    for p in &filter.include {
        if let Some((schema, name)) = p.exact()
            && !all.iter().any(|t| t.schema == schema && t.name == name)
        {
            return Err(SourceError::Setup(format!(
                "cannot create publication {publication:?}: table {schema}.{name} (filter.include) does not exist"
            )));
        }
    }
    let tables: Vec<&TableName> = all
        .iter()
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
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})",
        quote_ident(publication),
        list.join(", "),
        quote_literal(&ops.names().join(", "))
    );
    match conn.simple_query(&sql).await {
        Ok(_) => {
            info!(publication, tables = list.len(), publish = %ops.names().join(","), "created publication");
            Ok(())
        }
        Err(SourceError::Server(e)) if e.code == "42501" => Err(SourceError::Setup(format!(
            "publication {publication:?} does not exist and this role may not create it ({}). \
             Ask the tables' owner to run: {sql}",
            e.message
        ))),
        Err(e) => Err(e),
    }
}

/// Resolves the filter against every published table's real columns and replica identity,
/// exactly as it will be resolved when pgoutput describes the table, so a bad rule stops the
/// start instead of the stream.
pub async fn check_rules(
    conn: &mut Connection,
    publication: &str,
    filter: &FilterSettings,
    routing: &RoutingTemplate,
) -> Result<(), SourceError> {
    let sql = format!(
        "SELECT n.nspname, c.relname, c.relreplident, a.attname, a.atttypid::text, \
           CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false ELSE \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey) \
               AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END) \
           END \
         FROM pg_publication_tables pt \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE pt.pubname = {} ORDER BY 1, 2, a.attnum",
        quote_literal(publication)
    );
    let rows = conn.simple_query(&sql).await?;
    let mut current: Option<Relation> = None;
    let check = |rel: Relation| -> Result<(), SourceError> {
        filter.view(&Arc::new(rel), routing)?;
        Ok(())
    };
    for r in rows {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let (schema, name) = (get(0), get(1));
        if current
            .as_ref()
            .is_some_and(|c| c.schema != schema || c.name != name)
            && let Some(done) = current.take()
        {
            check(done)?;
        }
        let rel = current.get_or_insert_with(|| Relation {
            oid: 0,
            schema,
            name,
            replica_identity: ReplicaIdentity::from_byte(get(2).bytes().next().unwrap_or(b'd'))
                .unwrap_or(ReplicaIdentity::Default),
            columns: Vec::new(),
        });
        rel.columns.push(Column {
            name: get(3),
            is_key: get(5) == "t",
            type_oid: get(4).parse().unwrap_or(0),
            type_modifier: -1,
        });
    }
    if let Some(done) = current {
        check(done)?;
    }
    Ok(())
}
