//! The relations a publication makes pgoutput send, described as pgoutput will describe them
//! (published columns in table order, replica identity flags, row filters, column lists),
//! with the catalog's facts: read in three queries whatever the number of tables.

use super::catalog::{self, RelationFacts};
use super::conn::Connection;
use super::error::SourceError;
use super::setup::{self, quote_literal};
use crate::pgoutput::{Column, Relation, ReplicaIdentity};

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
