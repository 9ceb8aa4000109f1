//! Backfill requests and their progress, in a table of the streamed database
//! (`<backfill.schema>.backfill`, by default `walrelay.backfill`).
//!
//! Why there: every instance that may hold the slot (the active one, a standby that takes
//! over, a restarted pod with a fresh disk) reads the same rows; `walrelay backfill` needs only
//! the SQL access walrelay already has; and a request survives any restart of walrelay.
//! Progress (`last_key`, rows, chunks) is written only after the chunk's high watermark is
//! broker-confirmed, so the recorded position never runs ahead of what consumers have.
//! Rows are per slot: two deployments streaming one database do not take each other's work.

use crate::source::Connection;
use crate::source::SourceError;
use crate::source::setup::{TableName, quote_ident, quote_literal};

/// One backfill as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: i64,
    pub table: TableName,
    pub where_clause: Option<String>,
    /// `request` (walrelay backfill) or `snapshot` (the initial snapshot).
    pub kind: String,
    /// `pending`, `running`, `cancelling`, `finished`, `cancelled` or `failed`.
    pub state: String,
    /// The key values (as text) of the last row of the last confirmed chunk.
    pub last_key: Option<Vec<String>>,
    /// The largest key when the backfill started: rows inserted above it later come from the
    /// stream, so the backfill never chases a table's growing end.
    pub stop_key: Option<Vec<String>>,
    pub rows_done: i64,
    pub rows_estimated: Option<i64>,
    pub chunks_done: i64,
    /// Rows per second since it started.
    pub rate: f64,
    pub error: Option<String>,
}

impl Record {
    /// True while the backfill still has work (or its cancellation is to be announced).
    pub fn active(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running" | "cancelling")
    }
}

fn table_sql(schema: &str) -> String {
    format!("{}.backfill", quote_ident(schema))
}

/// Creates the schema and table when missing (two instances may race: the loser's error is
/// a duplicate, and the table exists either way).
///
/// Each statement runs only when its object is missing: PostgreSQL checks `CREATE SCHEMA IF NOT
/// EXISTS` against the database's `CREATE` privilege even when the schema exists, so a role
/// given a schema of its own (`CREATE SCHEMA walrelay AUTHORIZATION walrelay`) and nothing on
/// the database was refused with "permission denied for database".
pub(crate) async fn ensure(conn: &mut Connection, schema: &str) -> Result<(), SourceError> {
    if exists(conn, schema).await? {
        return Ok(());
    }
    let schema_exists = cell(
        conn.simple_query(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {})",
            quote_literal(schema)
        ))
        .await?
        .first(),
        0,
    ) == "t";
    let create_schema = if schema_exists {
        String::new()
    } else {
        format!("CREATE SCHEMA IF NOT EXISTS {}; ", quote_ident(schema))
    };
    let sql = format!(
        "{create_schema}\
         CREATE TABLE IF NOT EXISTS {t} ( \
           id bigserial PRIMARY KEY, \
           slot text NOT NULL, \
           schema_name text NOT NULL, \
           table_name text NOT NULL, \
           where_clause text, \
           kind text NOT NULL DEFAULT 'request', \
           state text NOT NULL DEFAULT 'pending', \
           last_key text, \
           stop_key text, \
           rows_done bigint NOT NULL DEFAULT 0, \
           rows_estimated bigint, \
           chunks_done bigint NOT NULL DEFAULT 0, \
           error text, \
           requested_at timestamptz NOT NULL DEFAULT now(), \
           started_at timestamptz, \
           updated_at timestamptz NOT NULL DEFAULT now(), \
           finished_at timestamptz)",
        t = table_sql(schema)
    );
    match conn.simple_query(&sql).await {
        Err(SourceError::Server(e)) if e.code == "23505" || e.code == "42P07" => Ok(()),
        other => other.map(|_| ()),
    }
}

/// True when the progress table exists (status and `--status` read nothing otherwise).
pub(crate) async fn exists(conn: &mut Connection, schema: &str) -> Result<bool, SourceError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT to_regclass({}) IS NOT NULL",
            quote_literal(&table_sql(schema))
        ))
        .await?;
    Ok(cell(rows.first(), 0) == "t")
}

/// Records a request; returns its id.
pub(crate) async fn request(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
    table: &TableName,
    where_clause: Option<&str>,
    kind: &str,
) -> Result<i64, SourceError> {
    let rows = conn
        .simple_query(&format!(
            "INSERT INTO {} (slot, schema_name, table_name, where_clause, kind) \
             VALUES ({}, {}, {}, {}, {}) RETURNING id",
            table_sql(schema),
            quote_literal(slot),
            quote_literal(&table.schema),
            quote_literal(&table.name),
            where_clause.map_or("NULL".to_owned(), quote_literal),
            quote_literal(kind)
        ))
        .await?;
    Ok(cell(rows.first(), 0).parse().unwrap_or(0))
}

/// Records the initial snapshot's requests, unless one for the same table is still active.
pub(crate) async fn request_snapshot(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
    tables: &[TableName],
) -> Result<(), SourceError> {
    for t in tables {
        conn.simple_query(&format!(
            "INSERT INTO {tab} (slot, schema_name, table_name, kind) \
             SELECT {slot}, {s}, {n}, 'snapshot' WHERE NOT EXISTS ( \
               SELECT 1 FROM {tab} WHERE slot = {slot} AND schema_name = {s} AND table_name = {n} \
               AND state IN ('pending', 'running', 'cancelling'))",
            tab = table_sql(schema),
            slot = quote_literal(slot),
            s = quote_literal(&t.schema),
            n = quote_literal(&t.name),
        ))
        .await?;
    }
    Ok(())
}

/// Records a backfill unless an identical one (same table, condition and kind) is still
/// active: a flood replayed after a restart asks again, and is not done twice.
pub(crate) async fn request_once(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
    table: &TableName,
    where_clause: Option<&str>,
    kind: &str,
) -> Result<(), SourceError> {
    let w = where_clause.map_or("NULL".to_owned(), quote_literal);
    conn.simple_query(&format!(
        "INSERT INTO {tab} (slot, schema_name, table_name, where_clause, kind) \
         SELECT {slot}, {s}, {n}, {w}, {k} WHERE NOT EXISTS ( \
           SELECT 1 FROM {tab} WHERE slot = {slot} AND schema_name = {s} AND table_name = {n} \
           AND where_clause IS NOT DISTINCT FROM {w} AND kind = {k} \
           AND state IN ('pending', 'running', 'cancelling'))",
        tab = table_sql(schema),
        slot = quote_literal(slot),
        s = quote_literal(&table.schema),
        n = quote_literal(&table.name),
        k = quote_literal(kind),
    ))
    .await?;
    Ok(())
}

/// Asks for the active backfills of `table` (all active ones when `None`) to be cancelled;
/// returns how many.
pub(crate) async fn cancel(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
    table: Option<&TableName>,
) -> Result<usize, SourceError> {
    let which = table.map_or(String::new(), |t| {
        format!(
            " AND schema_name = {} AND table_name = {}",
            quote_literal(&t.schema),
            quote_literal(&t.name)
        )
    });
    let rows = conn
        .simple_query(&format!(
            "UPDATE {} SET state = 'cancelling', updated_at = now() \
             WHERE slot = {} AND state IN ('pending', 'running'){which} RETURNING id",
            table_sql(schema),
            quote_literal(slot),
        ))
        .await?;
    Ok(rows.len())
}

const COLUMNS: &str = "id, schema_name, table_name, where_clause, kind, state, last_key, stop_key, \
     rows_done, rows_estimated, chunks_done, \
     rows_done / greatest(extract(epoch FROM coalesce(finished_at, now()) - started_at), 0.001), error";

/// Every backfill of this slot, newest first.
pub(crate) async fn list(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
) -> Result<Vec<Record>, SourceError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT {COLUMNS} FROM {} WHERE slot = {} ORDER BY id DESC",
            table_sql(schema),
            quote_literal(slot)
        ))
        .await?;
    Ok(rows.iter().map(|r| record(r)).collect::<Vec<_>>())
}

/// The oldest active backfill of this slot: backfills run one at a time, in request order.
pub(crate) async fn next(
    conn: &mut Connection,
    schema: &str,
    slot: &str,
) -> Result<Option<Record>, SourceError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT {COLUMNS} FROM {} WHERE slot = {} AND state IN ('pending', 'running', 'cancelling') \
             ORDER BY id LIMIT 1",
            table_sql(schema),
            quote_literal(slot)
        ))
        .await?;
    Ok(rows.first().map(|r| record(r)))
}

/// Marks a backfill running, with its stop key and row estimate (kept if already set).
pub(crate) async fn start(
    conn: &mut Connection,
    schema: &str,
    id: i64,
    stop_key: Option<&[String]>,
    estimate: i64,
) -> Result<(), SourceError> {
    conn.simple_query(&format!(
        "UPDATE {} SET state = 'running', started_at = coalesce(started_at, now()), \
         stop_key = coalesce(stop_key, {}), rows_estimated = coalesce(rows_estimated, {estimate}), \
         updated_at = now() WHERE id = {id} AND state = 'pending'",
        table_sql(schema),
        stop_key.map_or("NULL".to_owned(), |k| quote_literal(&key_text(k)))
    ))
    .await?;
    Ok(())
}

/// Records a broker-confirmed chunk.
pub(crate) async fn progress(
    conn: &mut Connection,
    schema: &str,
    id: i64,
    last_key: &[String],
    rows: i64,
) -> Result<(), SourceError> {
    conn.simple_query(&format!(
        "UPDATE {} SET last_key = {}, rows_done = rows_done + {rows}, chunks_done = chunks_done + 1, \
         updated_at = now() WHERE id = {id}",
        table_sql(schema),
        quote_literal(&key_text(last_key))
    ))
    .await?;
    Ok(())
}

/// Ends a backfill: `finished`, `cancelled` or `failed` (with the reason).
pub(crate) async fn finish(
    conn: &mut Connection,
    schema: &str,
    id: i64,
    state: &str,
    error: Option<&str>,
) -> Result<(), SourceError> {
    conn.simple_query(&format!(
        "UPDATE {} SET state = {}, error = {}, finished_at = now(), updated_at = now() WHERE id = {id}",
        table_sql(schema),
        quote_literal(state),
        error.map_or("NULL".to_owned(), quote_literal)
    ))
    .await?;
    Ok(())
}

/// Key values are kept as a JSON array of strings: any text, in the key's column order.
fn key_text(key: &[String]) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

fn parse_key(text: &str) -> Option<Vec<String>> {
    serde_json::from_str(text).ok()
}

fn cell(row: Option<&Vec<Option<String>>>, i: usize) -> String {
    row.and_then(|r| r.get(i).cloned().flatten())
        .unwrap_or_default()
}

fn record(r: &[Option<String>]) -> Record {
    let get = |i: usize| r.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok());
    Record {
        id: num(0).unwrap_or(0),
        table: TableName {
            schema: get(1).unwrap_or_default(),
            name: get(2).unwrap_or_default(),
        },
        where_clause: get(3),
        kind: get(4).unwrap_or_default(),
        state: get(5).unwrap_or_default(),
        last_key: get(6).as_deref().and_then(parse_key),
        stop_key: get(7).as_deref().and_then(parse_key),
        rows_done: num(8).unwrap_or(0),
        rows_estimated: num(9),
        chunks_done: num(10).unwrap_or(0),
        rate: get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0),
        error: get(12),
    }
}
