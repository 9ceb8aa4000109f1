//! `walrelay resync`: the way back from a broken slot or a publication gap, by hand (the
//! `postgres.on_slot_lost = "resync"` policy does the same by itself). It records the gap,
//! repairs the slot, announces `stream_gap` and requests a backfill of the affected tables;
//! `walrelay run` then streams and backfills. Against a healthy slot it says so and changes
//! nothing; `--dry-run` prints the plan.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::filter::glob::TablePattern;
use crate::resync::{self, Ask, Outcome};

/// How long the command decodes a healthy-looking slot's backlog, by default, looking for a
/// publication gap (the catalog cannot show one).
const DEFAULT_PROBE_SECONDS: u64 = 120;

/// `walrelay resync`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Only these tables (schema.table, `*` patterns); every published table by default.
    tables: Vec<String>,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long to decode the slot's backlog when looking for a publication gap.
    #[arg(long, default_value_t = DEFAULT_PROBE_SECONDS)]
    probe_seconds: u64,
}

pub async fn run(settings: &Settings, args: Args) -> ExitCode {
    let patterns = match args
        .tables
        .iter()
        .map(|t| TablePattern::parse(t))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("walrelay resync: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let ask = Ask {
        patterns,
        dry_run: args.dry_run,
        probe: Some(Duration::from_secs(args.probe_seconds.max(1))),
        ..Ask::default()
    };
    match resync::resync(settings, &ask).await {
        Ok(Outcome::Healthy(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Planned { gap, resumed }) => {
            let what = if resumed {
                format!(
                    "resync {} was recorded and not finished: it would be resumed\n",
                    gap.id
                )
            } else {
                "the stream is broken; a resync would:\n".to_owned()
            };
            println!("{what}{}(dry run: nothing changed)", resync::describe(&gap));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Done { gap, resumed }) => {
            print!(
                "resync {}{} done:\n{}start walrelay (or let the running one go on): it streams from the new start and backfills \
                 the tables; `walrelay backfill --status` shows their progress\n",
                gap.id,
                if resumed { " (resumed)" } else { "" },
                resync::describe(&gap)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walrelay resync: {}", crate::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
