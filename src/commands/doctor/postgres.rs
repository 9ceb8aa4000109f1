//! The doctor's PostgreSQL checks, over an ordinary connection with the configured URL: the
//! server's settings, the role (replication, backfill grants, `pg_read_all_stats`), the slot,
//! then the publication and its tables (`tables`).

use super::{Finding, Level, Streamed};
use crate::config::Settings;
use crate::source::setup::{parse_pg_duration, quote_literal};
use crate::source::{Connection, SourceError};

const SIDE: &str = "postgres";

pub(super) fn ok(m: impl Into<String>) -> Finding {
    Finding::new(Level::Ok, SIDE, m)
}
pub(super) fn warn(m: impl Into<String>) -> Finding {
    Finding::new(Level::Warn, SIDE, m)
}
pub(super) fn fail(m: impl Into<String>) -> Finding {
    Finding::new(Level::Fail, SIDE, m)
}

/// Runs the checks; returns the tables that will be streamed (for the RabbitMQ checks).
pub(super) async fn check(settings: &Settings, out: &mut Vec<Finding>) -> Vec<Streamed> {
    let mut c = match Connection::connect(&settings.source.conn, false).await {
        Ok(c) => c,
        Err(e) => {
            let conn = &settings.source.conn;
            let why = crate::error::error_chain(&e);
            // 42501 at connect: the database's CONNECT privilege (revoked from PUBLIC on
            // hardened servers), not the password.
            let hint = if e.sqlstate() == Some("42501") {
                format!(
                    "; as the database's owner: GRANT CONNECT ON DATABASE {} TO {};",
                    crate::source::setup::quote_ident(&conn.dbname),
                    crate::source::setup::quote_ident(&conn.user)
                )
            } else {
                String::new()
            };
            out.push(fail(format!(
                "cannot connect to {}:{} as {}: {why}{hint}",
                conn.host, conn.port, conn.user
            )));
            return Vec::new();
        }
    };
    let tables = match checks(settings, &mut c, out).await {
        Ok(t) => t,
        Err(e) => {
            out.push(fail(format!(
                "query failed: {}",
                crate::error::error_chain(&e)
            )));
            Vec::new()
        }
    };
    c.close().await;
    tables
}

pub(super) async fn one(c: &mut Connection, sql: &str) -> Result<Vec<Option<String>>, SourceError> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

pub(super) fn col(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// `postgres.failover_slot`: the server must support it, and the primary should hold logical
/// changes back until the standby has them (docs/operations.md#failover).
async fn failover_checks(
    settings: &Settings,
    c: &mut Connection,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let r = one(c, "SELECT current_setting('server_version_num')::int").await?;
    if col(&r, 0).parse::<i64>().unwrap_or(0) < 170000 {
        out.push(fail(
            "postgres.failover_slot needs PostgreSQL 17 or later: failover slots do not exist here",
        ));
        return Ok(());
    }
    let r = one(
        c,
        &format!(
            "SELECT current_setting('synchronized_standby_slots'), \
               (SELECT failover FROM pg_replication_slots WHERE slot_name = {})",
            quote_literal(&settings.source.slot)
        ),
    )
    .await?;
    if col(&r, 0).is_empty() {
        out.push(warn(
            "failover_slot is set but synchronized_standby_slots is empty: walrelay may receive changes \
             a standby does not have yet, and after a promotion the slot copy can be ahead of the new primary",
        ));
    } else {
        out.push(ok(format!("synchronized_standby_slots = {}", col(&r, 0))));
    }
    if col(&r, 1) == "f" {
        out.push(warn(format!(
            "slot {} exists without failover: walrelay enables it at start",
            settings.source.slot
        )));
    }
    Ok(())
}

/// The server's settings and the role; then the publication and its tables (`tables`).
async fn checks(
    settings: &Settings,
    c: &mut Connection,
    out: &mut Vec<Finding>,
) -> Result<Vec<Streamed>, SourceError> {
    let r = one(
        c,
        "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true), \
           current_setting('server_version')",
    )
    .await?;
    match (col(&r, 0).as_str(), col(&r, 1).as_str()) {
        ("logical", _) => out.push(ok(format!("wal_level is logical (PostgreSQL {})", col(&r, 2)))),
        (level, "off") => out.push(fail(format!(
            "wal_level is {level}: on RDS set rds.logical_replication = 1 in the parameter group and reboot"
        ))),
        (level, _) => out.push(fail(format!(
            "wal_level is {level}: set wal_level = logical in postgresql.conf and restart"
        ))),
    }

    let r = one(
        c,
        "SELECT r.rolname, r.rolsuper, r.rolreplication, \
           coalesce((SELECT pg_has_role(current_user, oid, 'member') FROM pg_roles WHERE rolname = 'rds_replication'), false) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .await?;
    let who = col(&r, 0);
    if col(&r, 1) == "t" || col(&r, 2) == "t" || col(&r, 3) == "t" {
        out.push(ok(format!("role {who} may use replication")));
    } else {
        out.push(fail(format!(
            "role {who} lacks REPLICATION: ALTER ROLE {who} REPLICATION (on RDS: GRANT rds_replication TO {who})"
        )));
    }

    let slot = quote_literal(&settings.source.slot);
    let r = one(
        c,
        &format!(
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots), \
               current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication), \
               (SELECT count(*) FROM pg_replication_slots WHERE slot_name = {slot}), \
               current_setting('max_slot_wal_keep_size'), current_setting('wal_sender_timeout')"
        ),
    )
    .await?;
    let n = |i| col(&r, i).parse::<i64>().unwrap_or(0);
    let (max_slots, slots, max_senders, senders, ours) = (n(0), n(1), n(2), n(3), n(4));
    if ours == 0 && slots >= max_slots {
        out.push(fail(format!(
            "no free replication slot ({slots} of max_replication_slots = {max_slots} used): raise it"
        )));
    } else {
        out.push(ok(format!(
            "replication slots: {slots} of {max_slots} used{}",
            if ours == 1 {
                format!(", {} exists", settings.source.slot)
            } else {
                String::new()
            }
        )));
    }
    if senders >= max_senders {
        out.push(fail(format!(
            "no free WAL sender ({senders} of max_wal_senders = {max_senders} busy)"
        )));
    } else {
        out.push(ok(format!("WAL senders: {senders} of {max_senders} busy")));
    }
    match col(&r, 5).as_str() {
        "-1" => out.push(warn(
            "max_slot_wal_keep_size = -1: while walrelay is stopped the slot retains WAL until the disk is full; set a limit and alert on walrelay_slot_retained_wal_bytes",
        )),
        v => {
            out.push(ok(format!(
                "max_slot_wal_keep_size = {v}: a slot further behind is invalidated and walrelay stops with \"slot lost\""
            )));
            wal_budget(settings, c, out).await?;
        }
    }
    match parse_pg_duration(&col(&r, 6)) {
        None => out.push(warn(
            "wal_sender_timeout = 0: dead replication connections are never noticed by the server",
        )),
        Some(t) => out.push(ok(format!("wal_sender_timeout = {} s", t.as_secs_f64()))),
    }
    if settings.source.failover_slot {
        failover_checks(settings, c, out).await?;
    }

    let tables = super::tables::check(settings, c, out).await?;
    backfill_grants(settings, c, &tables, out).await?;
    stats_grant(c, &who, out).await?;
    Ok(tables)
}

/// How long an outage the existing slot survives before `max_slot_wal_keep_size`
/// invalidates it; a warning under a fifth of the limit, as the running service warns.
async fn wal_budget(
    settings: &Settings,
    c: &mut Connection,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let slot = &settings.source.slot;
    if let Some((safe, keep, rate)) = crate::probe::budget(c, slot).await? {
        let words = crate::probe::survives(safe, rate);
        if crate::probe::low(safe, keep) {
            out.push(warn(format!(
                "slot {slot}: its WAL budget is low ({words}); past it the slot is invalidated and changes are lost"
            )));
        } else {
            out.push(ok(format!("slot {slot}: WAL budget: {words}")));
        }
    }
    Ok(())
}

/// What `walrelay backfill` (and `[snapshot]`) needs: SELECT on every streamed table and a
/// usable progress table. A failure: a backfill is the way back for a consumer that lost its
/// state, and must not wait for a grant on the day it is needed.
async fn backfill_grants(
    settings: &Settings,
    c: &mut Connection,
    tables: &[Streamed],
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let names: Vec<crate::source::setup::TableName> = tables
        .iter()
        .map(|t| crate::source::setup::TableName {
            schema: t.schema.clone(),
            name: t.name.clone(),
        })
        .collect();
    let schema = &settings.backfill.schema;
    let missing = crate::backfill::privileges::missing(c, schema, &names).await?;
    if missing.is_empty() {
        out.push(ok(format!(
            "backfill: the role may read {} and record progress in schema {schema}",
            match names.len() {
                1 => "the streamed table".to_owned(),
                n => format!("the {n} streamed tables"),
            }
        )));
    }
    for m in missing {
        out.push(fail(format!("backfill: {m}")));
    }
    Ok(())
}

/// `pg_read_all_stats` (or `pg_monitor`): without it the role sees no other role's session
/// state, so `status` cannot show the walsender and a backfill waits for sessions idle in
/// their transaction as if they were writing (docs/backfill.md).
async fn stats_grant(
    c: &mut Connection,
    who: &str,
    out: &mut Vec<Finding>,
) -> Result<(), SourceError> {
    let r = one(
        c,
        "SELECT r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .await?;
    if col(&r, 0) == "t" {
        out.push(ok(format!(
            "role {who} may read all sessions' state (pg_read_all_stats)"
        )));
    } else {
        out.push(warn(format!(
            "role {who} cannot see other roles' sessions: status shows no walsender details and a backfill waits for sessions idle in a transaction; GRANT pg_read_all_stats TO {};",
            crate::source::setup::quote_ident(who)
        )));
    }
    Ok(())
}
