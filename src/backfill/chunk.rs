//! The SQL of a backfill: the table's description (its key and published columns, from the
//! catalog), its row estimate, and the keyset queries that read one chunk after another in key
//! order (`WHERE key > last ORDER BY key LIMIT n`), compared by PostgreSQL with the key
//! columns' own types and collations.

use std::sync::Arc;

use super::worker::{Failure, Refusal};
use crate::event::TableIdentity;
use crate::pgoutput::Relation;
use crate::schema::RelationFacts;
use crate::source::setup::{TableName, quote_ident, quote_literal};
use crate::source::{Connection, SourceError, publication};

/// The table as pgoutput will describe it, with its key; refused when it is not published or
/// has no key.
pub(super) async fn describe(
    c: &mut Connection,
    publication: &str,
    table: &TableName,
) -> Result<(Arc<Relation>, Option<RelationFacts>, TableIdentity), Failure> {
    let rows = c
        .simple_query(&format!(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
            quote_literal(&table.schema),
            quote_literal(&table.name)
        ))
        .await?;
    let Some(oid) = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Err(Failure::Refused(Refusal(format!(
            "table {table} does not exist"
        ))));
    };
    let published = publication::published_relations(c, publication).await?;
    let streamed = published.iter().any(|p| {
        let t = TableIdentity::resolve(&p.rel, p.facts.as_ref());
        (t.schema.as_str(), t.name.as_str()) == (table.schema.as_str(), table.name.as_str())
    });
    if !streamed {
        return Err(Failure::Refused(Refusal(format!(
            "table {table} is not in publication {publication:?}: its changes do not stream, so a backfill could not be kept consistent with them"
        ))));
    }
    let Some(p) = publication::relations_by_oid(c, &[oid]).await?.pop() else {
        return Err(Failure::Refused(Refusal(format!("table {table} vanished"))));
    };
    let identity = TableIdentity::resolve(&p.rel, p.facts.as_ref());
    if identity.key.is_none() {
        return Err(Failure::Refused(Refusal(format!(
            "table {table} has no primary key or unique NOT NULL index among its published columns: \
             rows cannot be read in key order nor matched with their changes"
        ))));
    }
    Ok((Arc::new(p.rel), p.facts, identity))
}

/// `reltuples`: the planner's row estimate (0 before the first ANALYZE).
pub(super) async fn estimate(c: &mut Connection, table: &TableName) -> Result<i64, SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = {}::regclass",
            quote_literal(&table.quoted())
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The keyset query of one table.
pub(super) struct ChunkQuery<'a> {
    pub(super) table: &'a TableName,
    pub(super) columns: &'a Relation,
    pub(super) key: &'a [String],
    pub(super) where_clause: Option<&'a str>,
}

impl ChunkQuery<'_> {
    fn key_list(&self) -> String {
        let k: Vec<String> = self.key.iter().map(|c| quote_ident(c)).collect();
        format!("({})", k.join(", "))
    }

    fn filter(&self) -> String {
        self.where_clause
            .map_or(String::new(), |w| format!(" AND ({w})"))
    }

    /// The largest key now (`None`: no row matches).
    pub(super) async fn max_key(&self, c: &mut Connection) -> Result<Option<Vec<String>>, Failure> {
        let cols: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
        let desc: Vec<String> = cols.iter().map(|k| format!("{k} DESC")).collect();
        let rows = c
            .simple_query(&format!(
                "SELECT {} FROM {} WHERE true{} ORDER BY {} LIMIT 1",
                cols.join(", "),
                self.table.quoted(),
                self.filter(),
                desc.join(", ")
            ))
            .await?;
        Ok(rows
            .first()
            .map(|r| r.iter().map(|v| v.clone().unwrap_or_default()).collect()))
    }

    /// The next rows after `after` (from the start when `None`), up to `stop`, in key order.
    pub(super) async fn read(
        &self,
        c: &mut Connection,
        after: Option<&[String]>,
        stop: &[String],
        limit: usize,
    ) -> Result<Vec<Vec<Option<String>>>, Failure> {
        let cols: Vec<String> = self
            .columns
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let literals = |k: &[String]| {
            let v: Vec<String> = k.iter().map(|s| quote_literal(s)).collect();
            format!("({})", v.join(", "))
        };
        // Untyped literals take the key columns' types in a row comparison.
        let lower = after.map_or(String::new(), |a| {
            format!(" AND {} > {}", self.key_list(), literals(a))
        });
        let sql = format!(
            "SELECT {} FROM {} WHERE {} <= {}{lower}{} ORDER BY {} LIMIT {limit}",
            cols.join(", "),
            self.table.quoted(),
            self.key_list(),
            literals(stop),
            self.filter(),
            self.key
                .iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(c.simple_query(&sql).await?)
    }
}
