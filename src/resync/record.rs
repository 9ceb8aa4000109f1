//! The durable gap record (`<backfill.schema>.resync`), beside the backfill progress table and
//! for the same reasons: every instance and `walrelay resync` see it, and it survives any
//! restart. A record is `pending` from the moment the gap is known until one transaction
//! announces it (`stream_gap`), requests the backfills and marks it `done`.

use super::{Cause, Gap, ResyncError};
use crate::config::Settings;
use crate::lsn::Lsn;
use crate::source::setup::{TableName, quote_ident, quote_literal};
use crate::source::{Connection, SourceError};

fn table_sql(schema: &str) -> String {
    format!("{}.resync", quote_ident(schema))
}

/// Creates the record table (and the backfill table, which a resync fills) when missing.
async fn ensure(c: &mut Connection, schema: &str) -> Result<(), SourceError> {
    crate::backfill::store::ensure(c, schema).await?;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ( \
           id bigserial PRIMARY KEY, \
           slot text NOT NULL, \
           cause text NOT NULL, \
           from_lsn pg_lsn, \
           target_lsn pg_lsn, \
           to_lsn pg_lsn, \
           tables jsonb NOT NULL, \
           state text NOT NULL DEFAULT 'pending', \
           recorded_at timestamptz NOT NULL DEFAULT now(), \
           finished_at timestamptz)",
        table_sql(schema)
    );
    match c.simple_query(&sql).await {
        Err(SourceError::Server(e)) if e.code == "23505" || e.code == "42P07" => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn exists(c: &mut Connection, schema: &str) -> Result<bool, SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT to_regclass({}) IS NOT NULL",
            quote_literal(&table_sql(schema))
        ))
        .await?;
    Ok(cell(&rows, 0) == "t")
}

fn cell(rows: &[Vec<Option<String>>], i: usize) -> String {
    rows.first()
        .and_then(|r| r.get(i).cloned().flatten())
        .unwrap_or_default()
}

/// The oldest record of `slot` not done yet.
pub(super) async fn pending(
    c: &mut Connection,
    schema: &str,
    slot: &str,
) -> Result<Option<Gap>, ResyncError> {
    if !exists(c, schema).await? {
        return Ok(None);
    }
    let rows = c
        .simple_query(&format!(
            "SELECT id, cause, from_lsn, target_lsn, tables::text FROM {} \
             WHERE slot = {} AND state = 'pending' ORDER BY id LIMIT 1",
            table_sql(schema),
            quote_literal(slot)
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let get = |i: usize| row.get(i).cloned().flatten();
    let lsn = |i: usize| get(i).and_then(|s| s.parse::<Lsn>().ok());
    let label = get(1).unwrap_or_default();
    let cause = Cause::parse(&label).ok_or_else(|| {
        ResyncError::Refused(format!(
            "{}: record {} has an unknown cause {label:?}",
            table_sql(schema),
            get(0).unwrap_or_default()
        ))
    })?;
    let names: Vec<(String, String)> =
        serde_json::from_str(&get(4).unwrap_or_default()).map_err(|e| {
            ResyncError::Refused(format!("{}: unreadable tables: {e}", table_sql(schema)))
        })?;
    Ok(Some(Gap {
        id: get(0).and_then(|s| s.parse().ok()).unwrap_or(0),
        cause,
        from: lsn(2),
        target: lsn(3),
        to: None,
        tables: names
            .into_iter()
            .map(|(schema, name)| TableName { schema, name })
            .collect(),
    }))
}

/// Where the last finished resync of `slot` started the new stream: a position walrelay
/// accepted on purpose, so a state file older than it does not read as a moved slot.
pub(crate) async fn accepted(
    c: &mut Connection,
    schema: &str,
    slot: &str,
) -> Result<Option<Lsn>, SourceError> {
    if !exists(c, schema).await? {
        return Ok(None);
    }
    let rows = c
        .simple_query(&format!(
            "SELECT max(to_lsn) FROM {} WHERE slot = {} AND state = 'done'",
            table_sql(schema),
            quote_literal(slot)
        ))
        .await?;
    Ok(cell(&rows, 0).parse().ok())
}

/// Records the gap; returns its id.
pub(super) async fn insert(
    c: &mut Connection,
    schema: &str,
    slot: &str,
    gap: &Gap,
) -> Result<i64, SourceError> {
    ensure(c, schema).await?;
    let lsn = |l: Option<Lsn>| l.map_or("NULL".to_owned(), |l| quote_literal(&l.to_string()));
    let rows = c
        .simple_query(&format!(
            "INSERT INTO {} (slot, cause, from_lsn, target_lsn, tables) VALUES ({}, {}, {}, {}, {}) RETURNING id",
            table_sql(schema),
            quote_literal(slot),
            quote_literal(gap.cause.label()),
            lsn(gap.from),
            lsn(gap.target),
            quote_literal(&tables_json(&gap.tables).to_string()),
        ))
        .await?;
    Ok(cell(&rows, 0).parse().unwrap_or(0))
}

fn tables_json(tables: &[TableName]) -> serde_json::Value {
    serde_json::Value::Array(
        tables
            .iter()
            .map(|t| serde_json::json!([t.schema, t.name]))
            .collect(),
    )
}

/// One transaction: the `stream_gap` announcement (a logical message the new slot streams),
/// the older active backfills of the tables cancelled (their progress is from before the
/// gap), a backfill per table requested, and the record marked done.
pub(super) async fn finish(
    c: &mut Connection,
    settings: &Settings,
    gap: &Gap,
) -> Result<(), SourceError> {
    let (schema, slot) = (&settings.backfill.schema, &settings.source.slot);
    let lsn = |l: Option<Lsn>| l.map_or(serde_json::Value::Null, |l| l.to_string().into());
    let names: Vec<String> = gap.tables.iter().map(ToString::to_string).collect();
    let announcement = serde_json::json!({
        "kind": "stream_gap",
        "slot": slot,
        "resync": gap.id,
        "cause": gap.cause.label(),
        "from_lsn": lsn(gap.from),
        "to_lsn": lsn(gap.to),
        "tables": names,
    });
    let backfill = format!("{}.backfill", quote_ident(schema));
    let mut sql = format!(
        "SELECT pg_logical_emit_message(true, {}, {});",
        quote_literal(crate::backfill::CONTROL_PREFIX),
        quote_literal(&announcement.to_string())
    );
    for t in &gap.tables {
        let (s, n) = (quote_literal(&t.schema), quote_literal(&t.name));
        sql.push_str(&format!(
            "UPDATE {backfill} SET state = 'cancelled', finished_at = now(), updated_at = now(), \
               error = {why} \
             WHERE slot = {sl} AND schema_name = {s} AND table_name = {n} \
               AND state IN ('pending', 'running', 'cancelling'); \
             INSERT INTO {backfill} (slot, schema_name, table_name, kind) VALUES ({sl}, {s}, {n}, 'resync');",
            why = quote_literal(&format!(
                "superseded by resync {}: its progress was from before a stream gap",
                gap.id
            )),
            sl = quote_literal(slot),
        ));
    }
    sql.push_str(&format!(
        "UPDATE {} SET state = 'done', to_lsn = {}, finished_at = now() WHERE id = {} AND state = 'pending';",
        table_sql(schema),
        gap.to
            .map_or("NULL".to_owned(), |l| quote_literal(&l.to_string())),
        gap.id
    ));
    // One simple query: PostgreSQL runs its statements as one transaction.
    c.simple_query(&sql).await.map(|_| ())
}
