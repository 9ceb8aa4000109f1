//! `walrelay status`: the slot's state as PostgreSQL sees it, read over plain SQL so it works
//! from anywhere, including while walrelay runs on another machine (like `pgqadm status`);
//! and, when the configured `http.listen` answers from here, what the running walrelay says
//! of itself (`/readyz`): streaming, or why it holds the stream (an unroutable message, a
//! nack, a broker or database it cannot reach).

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::config::Settings;
use crate::filter::Verdict;
use crate::source::setup::quote_literal;
use crate::source::{Connection, SourceError, publication};

/// What `status` reports. Values are as PostgreSQL printed them (`None` for NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub slot: String,
    /// The role `status` connected as (for the grant it may need).
    pub role: String,
    pub exists: bool,
    pub fields: Vec<(&'static str, Option<String>)>,
    pub publication: String,
    pub publication_exists: bool,
    pub tables: Vec<String>,
    /// Published tables no `filter.include` pattern matches and no `exclude` names: their
    /// changes are dropped with a warning (or stop walrelay, with `on_unmatched = "stop"`).
    pub unmatched: Vec<String>,
    /// Published tables that `filter.exclude` names: decoded and dropped by that rule.
    pub excluded: Vec<String>,
    /// The slot's backfills, newest first (empty before the first request).
    pub backfills: Vec<crate::backfill::store::Record>,
    /// The running walrelay's own word, from `http.listen` (`None` when the endpoint is off).
    pub relay: Option<Relay>,
    /// The slot's WAL budget: `(safe_wal_size, max_slot_wal_keep_size, WAL bytes per second)`
    /// (`None` without a slot or a limit).
    pub budget: Option<(i64, i64, Option<f64>)>,
}

/// What `/readyz` at the configured address answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    pub url: String,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Ready in its role (`active` or `standby`).
    Ready { role: String },
    /// Not ready, with `/readyz`'s reasons (why the stream is held).
    NotReady { reasons: Vec<String> },
    /// Nothing answered: walrelay is not running on this machine, or listens elsewhere.
    Unreachable(String),
}

/// Asks the walrelay at `http.listen` (an unspecified address is asked on loopback).
async fn ask_relay(settings: &Settings) -> Option<Relay> {
    let mut addr = settings.service.http_listen?;
    if addr.port() == 0 {
        // A port the kernel picks at start cannot be known from the configuration.
        return None;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}/readyz");
    let get = url.clone();
    let answer = match tokio::task::spawn_blocking(move || crate::http::http_get(&get)).await {
        Ok(Ok((code, body))) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let reasons: Vec<String> = v["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if code == 200 {
                Answer::Ready {
                    role: v["role"].as_str().unwrap_or("active").to_owned(),
                }
            } else {
                Answer::NotReady { reasons }
            }
        }
        Ok(Err(e)) => Answer::Unreachable(e.to_string()),
        Err(e) => Answer::Unreachable(e.to_string()),
    };
    Some(Relay { url, answer })
}

const FIELDS: [&str; 12] = [
    "plugin",
    "database",
    "active",
    "active_pid",
    "confirmed_flush_lsn",
    "restart_lsn",
    "current_wal_lsn",
    "lag_bytes",
    "retained_wal_bytes",
    "wal_status",
    "safe_wal_size",
    "last_reply",
];

/// `walrelay status`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `walrelay status`: the report as a table or JSON; exit code 1 when PostgreSQL cannot be read.
pub async fn run(settings: &Settings, args: Args) -> ExitCode {
    match collect(settings).await {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walrelay status: {}", crate::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Connects with the configured URL (no replication) and reads the slot and the publication.
pub async fn collect(settings: &Settings) -> Result<Report, SourceError> {
    let mut c = Connection::connect(&settings.source.conn, false).await?;
    let slot = quote_literal(&settings.source.slot);
    let rows = c
        .simple_query(&format!(
            "SELECT s.plugin, s.database, s.active, s.active_pid, s.confirmed_flush_lsn, s.restart_lsn, \
               pg_current_wal_lsn(), (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint, \
               (pg_current_wal_lsn() - s.restart_lsn)::bigint, s.wal_status, s.safe_wal_size, \
               (SELECT r.reply_time FROM pg_stat_replication r WHERE r.pid = s.active_pid) \
             FROM pg_replication_slots s WHERE s.slot_name = {slot}"
        ))
        .await?;
    let pubname = quote_literal(&settings.source.publication);
    let publication_exists = !c
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {pubname}"
        ))
        .await?
        .is_empty();
    let tables = c
        .simple_query(&format!(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = {pubname} ORDER BY 1"
        ))
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let mut unmatched = Vec::new();
    let mut excluded = Vec::new();
    if publication_exists {
        for p in publication::published_relations(&mut c, &settings.source.publication).await? {
            let rel = std::sync::Arc::new(p.rel);
            // A rule that cannot apply is `doctor`'s and `run`'s to report; here only the verdict.
            let Ok(view) = settings
                .filter
                .view(&rel, p.facts.as_ref(), &settings.sink.routing_key)
            else {
                continue;
            };
            let name = format!("{}.{}", rel.schema, rel.name);
            match view.verdict {
                Verdict::Included => {}
                Verdict::Excluded => excluded.push(name),
                Verdict::Unmatched => unmatched.push(name),
            }
        }
    }
    let schema = &settings.backfill.schema;
    let backfills = if crate::backfill::store::exists(&mut c, schema).await? {
        crate::backfill::store::list(&mut c, schema, &settings.source.slot).await?
    } else {
        Vec::new()
    };
    let budget = if rows.is_empty() {
        None
    } else {
        crate::probe::budget(&mut c, &settings.source.slot).await?
    };
    c.close().await;
    let relay = ask_relay(settings).await;
    let row = rows.into_iter().next();
    Ok(Report {
        slot: settings.source.slot.clone(),
        role: settings.source.conn.user.clone(),
        exists: row.is_some(),
        fields: FIELDS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    *name,
                    row.as_ref().and_then(|r| r.get(i).cloned().flatten()),
                )
            })
            .collect(),
        publication: settings.source.publication.clone(),
        publication_exists,
        tables,
        unmatched,
        excluded,
        backfills,
        relay,
        budget,
    })
}

impl Report {
    pub fn to_json(&self) -> Value {
        let mut slot = serde_json::Map::new();
        slot.insert("name".into(), json!(self.slot));
        slot.insert("exists".into(), json!(self.exists));
        for (k, v) in &self.fields {
            let value = match (k, v) {
                (_, None) => Value::Null,
                (&"active", Some(b)) => json!(b == "t"),
                (
                    &("active_pid" | "lag_bytes" | "retained_wal_bytes" | "safe_wal_size"),
                    Some(n),
                ) => n.parse::<i64>().map_or_else(|_| json!(n), |n| json!(n)),
                (_, Some(s)) => json!(s),
            };
            slot.insert((*k).into(), value);
        }
        if let Some((safe, _, rate)) = self.budget {
            let outage = rate.and_then(|r| crate::probe::outage(safe, r));
            slot.insert("wal_rate_bytes_per_second".into(), json!(rate));
            slot.insert(
                "outage_survived_seconds".into(),
                json!(outage.map(|d| d.as_secs())),
            );
        }
        let relay = self.relay.as_ref().map(|r| match &r.answer {
            Answer::Ready { role } => {
                json!({"url": r.url, "reachable": true, "ready": true, "role": role, "reasons": []})
            }
            Answer::NotReady { reasons } => {
                json!({"url": r.url, "reachable": true, "ready": false, "reasons": reasons})
            }
            Answer::Unreachable(e) => json!({"url": r.url, "reachable": false, "error": e}),
        });
        json!({
            "relay": relay,
            "slot": slot,
            "publication": {
                "name": self.publication,
                "exists": self.publication_exists,
                "tables": self.tables,
                "unmatched": self.unmatched,
                "excluded": self.excluded,
            },
            "backfills": self.backfills.iter().map(|b| json!({
                "id": b.id,
                "table": b.table.to_string(),
                "kind": b.kind,
                "state": b.state,
                "where": b.where_clause,
                "rows_done": b.rows_done,
                "rows_estimated": b.rows_estimated,
                "chunks_done": b.chunks_done,
                "rows_per_second": b.rate,
                "error": b.error,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<22}{v}\n"));
        if let Some(r) = &self.relay {
            match &r.answer {
                Answer::Ready { role } if role == "standby" => line(
                    "walrelay",
                    &format!("standby: another instance holds the slot ({})", r.url),
                ),
                Answer::Ready { .. } => line("walrelay", &format!("streaming ({})", r.url)),
                Answer::NotReady { reasons } => {
                    line("walrelay", &format!("HELD: not streaming ({})", r.url));
                    for why in reasons {
                        line("  why", why);
                    }
                }
                Answer::Unreachable(e) => line(
                    "walrelay",
                    &format!(
                        "no answer at {} ({e}): not running on this machine, or on another http.listen",
                        r.url
                    ),
                ),
            }
        }
        line("slot", &self.slot);
        if !self.exists {
            line(
                "  state",
                "missing (walrelay creates it on its first start)",
            );
        }
        let active = self
            .fields
            .iter()
            .any(|(k, v)| *k == "active" && v.as_deref() == Some("t"));
        for (k, v) in &self.fields {
            if !self.exists {
                continue;
            }
            match (k, v) {
                // PostgreSQL hides another role's pg_stat_replication row details.
                (&"last_reply", None) if active => line(
                    "  last_reply",
                    &format!("- (GRANT pg_read_all_stats TO {} to see it)", self.role),
                ),
                _ => line(&format!("  {k}"), v.as_deref().unwrap_or("-")),
            }
        }
        if let Some((safe, keep, rate)) = self.budget {
            let words = crate::probe::survives(safe, rate);
            if crate::probe::low(safe, keep) {
                line("  WAL budget", &format!("LOW: {words}"));
            } else {
                line("  WAL budget", &words);
            }
        }
        line("publication", &self.publication);
        if !self.publication_exists {
            line(
                "  state",
                "missing (walrelay creates it from filter.include)",
            );
        }
        line("  tables", &self.tables.join(", "));
        if !self.unmatched.is_empty() {
            line(
                "  unmatched",
                &format!(
                    "{} (no filter.include pattern matches: changes dropped with a warning; add them to filter.include or filter.exclude)",
                    self.unmatched.join(", ")
                ),
            );
        }
        if !self.excluded.is_empty() {
            line(
                "  excluded",
                &format!(
                    "{} (decoded and dropped by filter.exclude; remove them from the publication to save the work)",
                    self.excluded.join(", ")
                ),
            );
        }
        if !self.backfills.is_empty() {
            out.push_str("backfills\n");
            for l in super::backfill::table(&self.backfills).lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
        out
    }
}
