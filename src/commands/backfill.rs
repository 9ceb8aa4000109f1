//! `walrelay backfill`: records a request (checked first: the table exists, streams and has a
//! key, and walrelay's role may read it and record progress), cancels one, or lists them. It
//! talks only to PostgreSQL: whichever instance holds the slot picks the request up, including
//! a standby after it takes over.

use std::process::ExitCode;

use crate::backfill::store::{self, Record};
use crate::config::Settings;
use crate::event::TableIdentity;
use crate::filter::glob::TablePattern;
use crate::source::setup::{TableName, quote_literal};
use crate::source::{Connection, SourceError, publication};

/// What the command was asked to do.
pub enum Request<'a> {
    Start {
        table: &'a str,
        where_clause: Option<&'a str>,
    },
    Cancel {
        table: Option<&'a str>,
    },
    Status,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// `walrelay backfill`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// The table, as schema.table.
    table: Option<String>,
    /// Only the rows matching this SQL condition.
    #[arg(long = "where", value_name = "CONDITION")]
    where_clause: Option<String>,
    /// List every backfill of the slot with its progress.
    #[arg(long)]
    status: bool,
    /// Stop the active backfills (of TABLE when given).
    #[arg(long)]
    cancel: bool,
}

/// `walrelay backfill`: prints what was done, or the refusal (exit code 1).
pub async fn run(settings: &Settings, args: Args) -> ExitCode {
    let request = match (args.table.as_deref(), args.status, args.cancel) {
        (_, true, _) => Request::Status,
        (t, _, true) => Request::Cancel { table: t },
        (Some(t), _, _) => Request::Start {
            table: t,
            where_clause: args.where_clause.as_deref(),
        },
        (None, _, _) => Request::Status,
    };
    match execute(settings, request).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walrelay backfill: {}", crate::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the request; returns what to print.
pub async fn execute(settings: &Settings, request: Request<'_>) -> Result<String, CliError> {
    let mut c = Connection::connect(&settings.source.conn, false).await?;
    let schema = &settings.backfill.schema;
    let slot = &settings.source.slot;
    let text = match request {
        Request::Status => {
            let list = if store::exists(&mut c, schema).await? {
                store::list(&mut c, schema, slot).await?
            } else {
                Vec::new()
            };
            table(&list)
        }
        Request::Cancel { table } => {
            let name = table.map(parse_table).transpose()?;
            let n = if store::exists(&mut c, schema).await? {
                store::cancel(&mut c, schema, slot, name.as_ref()).await?
            } else {
                0
            };
            format!(
                "{n} backfill(s) asked to stop: the running instance announces it and stops after the current chunk\n"
            )
        }
        Request::Start {
            table,
            where_clause,
        } => {
            let name = parse_table(table)?;
            check(&mut c, settings, &name, where_clause).await?;
            store::ensure(&mut c, schema).await?;
            let id = store::request(&mut c, schema, slot, &name, where_clause, "request").await?;
            format!(
                "backfill {id} of {name} recorded: the instance streaming slot {slot} runs it \
                 (`walrelay backfill --status` shows its progress)\n"
            )
        }
    };
    c.close().await;
    Ok(text)
}

fn parse_table(text: &str) -> Result<TableName, CliError> {
    let pattern = TablePattern::parse(text).map_err(CliError::Refused)?;
    let (schema, name) = pattern.exact().ok_or_else(|| {
        CliError::Refused(format!(
            "{text:?} is a pattern: name one table, as schema.table"
        ))
    })?;
    Ok(TableName {
        schema: schema.to_owned(),
        name: name.to_owned(),
    })
}

/// Refuses, before anything is recorded, what the worker could not do.
async fn check(
    c: &mut Connection,
    settings: &Settings,
    table: &TableName,
    where_clause: Option<&str>,
) -> Result<(), CliError> {
    let refused = |m: String| Err(CliError::Refused(m));
    if !settings.filter.included(&table.schema, &table.name) {
        return refused(format!(
            "{table} is not published by this configuration (filter.include / filter.exclude): its rows would be dropped"
        ));
    }
    let published = publication::published_relations(c, &settings.source.publication).await?;
    let found = published.iter().find(|p| {
        let t = TableIdentity::resolve(&p.rel, p.facts.as_ref());
        (t.schema.as_str(), t.name.as_str()) == (table.schema.as_str(), table.name.as_str())
    });
    let Some(p) = found else {
        return refused(format!(
            "{table} is not in publication {:?} (or does not exist): its changes do not stream, so a backfill could not be kept consistent with them",
            settings.source.publication
        ));
    };
    if TableIdentity::resolve(&p.rel, p.facts.as_ref())
        .key
        .is_none()
        && p.rel.schema == table.schema
    {
        return refused(format!(
            "{table} has no primary key or unique NOT NULL index among its published columns: \
             its rows can be neither read in key order nor matched with their changes"
        ));
    }
    let missing = crate::backfill::privileges::missing(
        c,
        &settings.backfill.schema,
        std::slice::from_ref(table),
    )
    .await?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return refused(format!(
            "walrelay's role ({}) cannot backfill {table}: {}. Run the GRANT as the table's owner or a superuser, then ask again (nothing was recorded)",
            settings.source.conn.user,
            list.join("; ")
        ));
    }
    if let Some(w) = where_clause {
        // The server checks the clause now, not at the first chunk.
        let sql = format!("EXPLAIN SELECT 1 FROM {} WHERE ({w})", table.quoted());
        if let Err(SourceError::Server(e)) = c.simple_query(&sql).await {
            return refused(format!("--where {}: {}", quote_literal(w), e.message));
        }
    }
    Ok(())
}

/// The backfills as a table.
pub fn table(list: &[Record]) -> String {
    if list.is_empty() {
        return "no backfills\n".to_owned();
    }
    let mut out = format!(
        "{:>5}  {:<30} {:<10} {:>10} {:>10} {:>9}  {}\n",
        "id", "table", "state", "rows", "estimated", "rows/s", "where / error"
    );
    for r in list {
        out.push_str(&format!(
            "{:>5}  {:<30} {:<10} {:>10} {:>10} {:>9.0}  {}\n",
            r.id,
            r.table.to_string(),
            r.state,
            r.rows_done,
            r.rows_estimated.map_or("-".to_owned(), |e| e.to_string()),
            r.rate,
            r.error
                .as_deref()
                .or(r.where_clause.as_deref())
                .unwrap_or("")
        ));
    }
    out
}
