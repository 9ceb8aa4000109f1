//! Preparing a replication connection: the slot, the type catalog and the server's
//! `wal_sender_timeout`, all before `START_REPLICATION` (the publication is in
//! [`super::publication`]).
//!
//! The slot is created when missing and never dropped: dropping it would throw away the
//! position that makes delivery at-least-once. A slot that disappears or jumps ahead while
//! walrelay runs is reported as lost, never silently recreated.

use std::time::Duration;

use tracing::info;

use super::conn::Connection;
use super::error::{Broken, SourceError};
use crate::lsn::Lsn;
use crate::value::{PgAttrRow, PgTypeRow, TypeRegistry};

/// SQL quoting is libpq's, as ported by `postgres-protocol`: identifiers always in double
/// quotes, literals in single quotes (as `E'…'` when they hold a backslash, which is right
/// whatever `standard_conforming_strings` says).
pub use postgres_protocol::escape::{
    escape_identifier as quote_ident, escape_literal as quote_literal,
};

/// A `schema.table` name as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// What the slot looked like when the session started.
#[derive(Clone, Debug)]
pub struct SlotState {
    pub confirmed_flush: Lsn,
    pub created: bool,
}

/// `IDENTIFY_SYSTEM`: proves this is a replication connection; returns the database name
/// (column 4 of systemid, timeline, xlogpos, dbname) and the server's WAL position.
pub async fn identify_system(conn: &mut Connection) -> Result<SystemIdentity, SourceError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| SourceError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let xlogpos = get(2)
        .parse::<Lsn>()
        .map_err(|e| SourceError::Protocol(e.to_string()))?;
    let timeline = get(1)
        .parse::<u32>()
        .map_err(|_| SourceError::Protocol("IDENTIFY_SYSTEM: timeline is not a number".into()))?;
    Ok(SystemIdentity {
        system_id: get(0),
        timeline,
        xlogpos,
        database: get(3),
    })
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Clone, Debug)]
pub struct SystemIdentity {
    /// Differs between servers (initdb), kept by physical replicas and restores.
    pub system_id: String,
    /// Starts anew at a promotion or point-in-time restore.
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub database: String,
}

/// Finds the slot, creating it when missing. `known` is the position this process last
/// confirmed; a slot that vanished or moved past it means data would be skipped.
pub async fn ensure_slot(
    conn: &mut Connection,
    slot: &str,
    database: &str,
    known: Option<Lsn>,
    failover: bool,
) -> Result<SlotState, SourceError> {
    if failover {
        require_failover_support(conn).await?;
    }
    let rows = conn
        .simple_query(&format!(
            "SELECT plugin, database, confirmed_flush_lsn, wal_status{} FROM pg_replication_slots WHERE slot_name = {}",
            if failover { ", failover" } else { "" },
            quote_literal(slot)
        ))
        .await?;
    let lost = |broken: Broken, problem: String| SourceError::SlotLost {
        slot: slot.to_owned(),
        problem,
        broken,
    };
    let Some(row) = rows.first() else {
        if let Some(lsn) = known {
            return Err(lost(
                Broken::Dropped,
                format!(
                    "disappeared while walrelay was streaming from it (last confirmed {lsn}); \
                 changes after that point may be gone. `walrelay resync` recreates it and backfills the tables (docs/operations.md, When a slot is lost)"
                ),
            ));
        }
        // The option list syntax exists since PostgreSQL 15; the legacy keyword keeps 14 working.
        let options = if failover {
            "(SNAPSHOT 'nothing', FAILOVER)"
        } else {
            "NOEXPORT_SNAPSHOT"
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {options}",
            quote_ident(slot)
        );
        let created = conn.simple_query(&sql).await?;
        let pos = created
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|s| s.parse::<Lsn>().ok())
            .unwrap_or(Lsn::ZERO);
        info!(slot, consistent_point = %pos, "created replication slot");
        return Ok(SlotState {
            confirmed_flush: pos,
            created: true,
        });
    };
    let get = |i: usize| row.get(i).cloned().flatten();
    if get(0).as_deref() != Some("pgoutput") {
        return Err(lost(
            Broken::Foreign,
            format!(
                "uses plugin {:?}, walrelay needs pgoutput",
                get(0).unwrap_or_default()
            ),
        ));
    }
    if get(1).as_deref() != Some(database) {
        return Err(lost(
            Broken::Foreign,
            format!(
                "belongs to database {:?}, not {database:?}",
                get(1).unwrap_or_default()
            ),
        ));
    }
    if get(3).as_deref() == Some("lost") {
        return Err(lost(
            Broken::Invalidated,
            "is invalidated (wal_status = lost): the WAL it needed was removed, so changes were lost. \
             `walrelay resync` recreates the slot and backfills the tables (docs/operations.md, When a slot is lost)"
                .into(),
        ));
    }
    let confirmed = get(2)
        .and_then(|s| s.parse::<Lsn>().ok())
        .unwrap_or(Lsn::ZERO);
    if failover && get(4).as_deref() == Some("f") {
        let sql = format!("ALTER_REPLICATION_SLOT {} (FAILOVER)", quote_ident(slot));
        conn.simple_query(&sql).await?;
        info!(slot, "enabled failover on the existing replication slot");
    }
    if let Some(known) = known
        && confirmed > known
    {
        return Err(lost(
            Broken::Moved,
            format!(
                "was advanced to {confirmed} by someone else while walrelay had confirmed only {known}; \
             the changes in between were never published. `walrelay resync` accepts the new position and backfills the tables"
            ),
        ));
    }
    Ok(SlotState {
        confirmed_flush: confirmed,
        created: false,
    })
}

/// `server_version_num`, e.g. 150004 (0 when unreadable).
pub async fn server_version(conn: &mut Connection) -> Result<u32, SourceError> {
    let rows = conn.simple_query("SHOW server_version_num").await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// `postgres.failover_slot` needs PostgreSQL 17: say so instead of failing on the syntax.
async fn require_failover_support(conn: &mut Connection) -> Result<(), SourceError> {
    let version = server_version(conn).await?;
    if version < 170000 {
        return Err(SourceError::Setup(format!(
            "postgres.failover_slot needs PostgreSQL 17 or later; this server is {version}"
        )));
    }
    Ok(())
}

/// Loads `pg_type` (and the attributes of composite types that columns use) so domains,
/// arrays, composites and hstore render like `to_jsonb()` renders them.
pub async fn load_types(conn: &mut Connection) -> Result<TypeRegistry, SourceError> {
    let rows = conn
        .simple_query(
            "SELECT oid, typtype, typelem, typdelim, typbasetype, typlen, typname FROM pg_catalog.pg_type",
        )
        .await?;
    let parsed: Vec<PgTypeRow> = rows
        .iter()
        .filter_map(|r| {
            let s = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            Some(PgTypeRow {
                oid: s(0).parse().ok()?,
                typtype: *s(1).as_bytes().first()?,
                typelem: s(2).parse().ok()?,
                typdelim: *s(3).as_bytes().first()?,
                typbasetype: s(4).parse().ok()?,
                typlen: s(5).parse().ok()?,
                typname: s(6),
            })
        })
        .collect();
    // Every table has a row type; only standalone composite types and row types that some
    // column (or array column) uses are worth loading.
    let rows = conn
        .simple_query(
            "SELECT t.oid, a.attname, a.atttypid FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_class c ON c.oid = t.typrelid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid \
             WHERE t.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped \
               AND (c.relkind = 'c' \
                    OR t.oid IN (SELECT atttypid FROM pg_catalog.pg_attribute WHERE attnum > 0) \
                    OR t.typarray IN (SELECT atttypid FROM pg_catalog.pg_attribute WHERE attnum > 0)) \
             ORDER BY t.oid, a.attnum",
        )
        .await?;
    let attrs: Vec<PgAttrRow> = rows
        .iter()
        .filter_map(|r| {
            let s = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            Some(PgAttrRow {
                typoid: s(0).parse().ok()?,
                name: s(1),
                atttypid: s(2).parse().ok()?,
            })
        })
        .collect();
    Ok(TypeRegistry::from_pg_type(&parsed, &attrs))
}

/// Reads `wal_sender_timeout`, so status updates can be sent well within it.
pub async fn wal_sender_timeout(conn: &mut Connection) -> Result<Option<Duration>, SourceError> {
    let rows = conn.simple_query("SHOW wal_sender_timeout").await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| parse_pg_duration(&v)))
}

/// Parses PostgreSQL's time settings (`60s`, `1min`, `500ms`, `0`); `None` for 0 (disabled).
pub fn parse_pg_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        let t = TableName {
            schema: "Public".into(),
            name: "my table".into(),
        };
        assert_eq!(t.quoted(), "\"Public\".\"my table\"");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), None);
    }
}
