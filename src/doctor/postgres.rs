//! The doctor's PostgreSQL checks, over an ordinary connection with the configured URL.

use super::{Finding, Level, Streamed};
use crate::config::Settings;
use crate::filter::Verdict;
use crate::pgoutput::ReplicaIdentity;
use crate::source::publication;
use crate::source::setup::{parse_pg_duration, quote_literal};
use crate::source::{Connection, SourceError};

const SIDE: &str = "postgres";

fn ok(m: impl Into<String>) -> Finding {
    Finding::new(Level::Ok, SIDE, m)
}
fn warn(m: impl Into<String>) -> Finding {
    Finding::new(Level::Warn, SIDE, m)
}
fn fail(m: impl Into<String>) -> Finding {
    Finding::new(Level::Fail, SIDE, m)
}

/// Runs the checks; returns the tables that will be streamed (for the RabbitMQ checks).
pub async fn check(settings: &Settings, out: &mut Vec<Finding>) -> Vec<Streamed> {
    let mut c = match Connection::connect(&settings.source.conn, false).await {
        Ok(c) => c,
        Err(e) => {
            out.push(fail(format!(
                "cannot connect to {}:{} as {}: {}",
                settings.source.conn.host,
                settings.source.conn.port,
                settings.source.conn.user,
                crate::error::error_chain(&e)
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

async fn one(c: &mut Connection, sql: &str) -> Result<Vec<Option<String>>, SourceError> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

fn col(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
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
        v => out.push(ok(format!(
            "max_slot_wal_keep_size = {v}: a slot further behind is invalidated and walrelay stops with \"slot lost\""
        ))),
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

    let pubname = quote_literal(&settings.source.publication);
    let exists = !c
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {pubname}"
        ))
        .await?
        .is_empty();
    let filter = &settings.filter;
    // The relations pgoutput will describe: the publication's, or those walrelay would put in
    // the one it creates (partitions of an included root are published through the root).
    let relations = if exists {
        publication::published_relations(c, &settings.source.publication).await?
    } else {
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
                let root_included = r.get(3).cloned().flatten().is_some()
                    && filter.included(&col(r, 3), &col(r, 4));
                own && !root_included
            })
            .filter_map(|r| col(r, 0).parse().ok())
            .collect();
        publication::relations_by_oid(c, &oids).await?
    };
    let mut streamed: Vec<Streamed> = Vec::new();
    let mut rule_error = None;
    for p in relations {
        let rel = std::sync::Arc::new(p.rel);
        let leaf = format!("{}.{}", rel.schema, rel.name);
        let view = match filter.view(&rel, p.facts.as_ref(), &settings.sink.routing_key) {
            Ok(v) => v,
            Err(e) => {
                rule_error.get_or_insert(e.to_string());
                continue;
            }
        };
        match view.verdict {
            Verdict::Included => {}
            Verdict::Excluded => {
                out.push(warn(format!(
                    "{leaf} is published but filter.exclude names it: its changes are decoded and dropped"
                )));
                continue;
            }
            Verdict::Unmatched => {
                out.push(warn(format!(
                    "{leaf} is published but no filter.include pattern matches it: its changes will be dropped \
                     with a warning and counted in walrelay_events_unmatched_total (add it to filter.include or \
                     filter.exclude; filter.on_unmatched = \"stop\" stops instead)"
                )));
                continue;
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
        if rel.replica_identity != ReplicaIdentity::Full {
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
            if !toast.is_empty() {
                out.push(warn(format!(
                    "{leaf}: TOASTable columns ({}) are listed in unchanged_toast when an update leaves them alone, and absent from old; use REPLICA IDENTITY FULL if consumers need them",
                    toast.join(", ")
                )));
            }
        }
        match &t.key {
            Some(_) => out.push(ok(format!(
                "{table}: key = {}",
                crate::filter::key_description(t, &rel)
            ))),
            None => out.push(warn(format!(
                "{table} has no key (no primary key, replica identity index or single unique NOT NULL index among the published columns): \
                 its events carry \"key\": null and all go to partition 0"
            ))),
        }
        if !streamed
            .iter()
            .any(|s| (s.schema.as_str(), s.name.as_str()) == (&t.schema, &t.name))
        {
            streamed.push(Streamed {
                schema: t.schema.clone(),
                name: t.name.clone(),
                ops: ops.names(),
                key_columns: t
                    .key_columns()
                    .iter()
                    .filter_map(|i| rel.columns.get(*i).map(|c| c.name.clone()))
                    .collect(),
            });
        }
    }
    if let Some(e) = rule_error {
        out.push(fail(e));
    }
    let tables = |n: usize| {
        if n == 1 {
            "1 table".to_owned()
        } else {
            format!("{n} tables")
        }
    };
    if exists {
        out.push(ok(format!(
            "publication {} exists ({} streamed)",
            settings.source.publication,
            tables(streamed.len())
        )));
        for p in &filter.include {
            if p.exact().is_none() && !streamed.iter().any(|t| p.matches(&t.schema, &t.name)) {
                out.push(warn(format!(
                    "filter.include {:?} matches no table of publication {}",
                    p.text, settings.source.publication
                )));
            }
        }
        // The same checks `run` makes at start (an exactly named table missing from the
        // publication, a rule that cannot apply), with the same remedy.
        if let Err(e) = publication::check_rules(
            c,
            &settings.source.publication,
            filter,
            &settings.sink.routing_key,
        )
        .await
            && !matches!(e, publication::CheckError::Rule(_))
        {
            out.push(fail(e.to_string()));
        }
    } else {
        match publication::plan(c, &settings.source.publication, filter).await {
            Err(e) => out.push(fail(e.to_string())),
            Ok(plan) => match create_refusal(c, &plan).await? {
                Some(why) => out.push(fail(publication::may_not_create(
                    &settings.source.publication,
                    &why,
                    &plan.sql,
                ))),
                None => out.push(ok(format!(
                    "publication {} will be created for {}",
                    settings.source.publication,
                    tables(plan.tables.len())
                ))),
            },
        }
    }
    Ok(streamed)
}
