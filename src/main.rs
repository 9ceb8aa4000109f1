//! The `walrelay` binary: parses the command line, loads the configuration, sets up logging and
//! the runtime, and hands over to the command (`walrelay::commands`). Logic lives in the library
//! so tests can drive it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walrelay::commands::{self, EXIT_CONFIG};

#[derive(Parser)]
#[command(
    name = "walrelay",
    version,
    about = "Streams committed PostgreSQL changes to RabbitMQ, at least once"
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "WALRELAY_CONFIG",
        default_value = "walrelay.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes until SIGTERM or SIGINT.
    Run(commands::run::Args),
    /// Validate the configuration file without connecting anywhere.
    CheckConfig(commands::check_config::Args),
    /// Show the slot's state, lag and retained WAL (works while walrelay runs elsewhere), and
    /// whether the walrelay at http.listen streams or why it holds the stream.
    Status(commands::status::Args),
    /// Check this machine, PostgreSQL and RabbitMQ before the first start; creates nothing.
    Doctor,
    /// Print the events walrelay publishes: by default through a temporary queue bound to its
    /// exchange, from now on.
    Tail(commands::tail::Args),
    /// Backfill a table's existing rows beside the stream (as `read` events); the instance that
    /// holds the slot runs it. `--status` lists backfills, `--cancel` stops them.
    Backfill(commands::backfill::Args),
    /// The way back from a lost, dropped or moved slot or a publication gap: record the gap,
    /// repair the slot, announce `stream_gap`, backfill the tables. `--dry-run` prints the plan.
    Resync(commands::resync::Args),
    /// Exit 0 when a walrelay's /readyz says ready (for container HEALTHCHECKs).
    Ready(commands::ready::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ready(args) = cli.command {
        return commands::ready::run(args);
    }
    let path = cli.config;
    let settings = match walrelay::config::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_json = match &cli.command {
        Command::CheckConfig(_) => false,
        Command::Run(commands::run::Args {
            log_format: Some(f),
        }) => match walrelay::config::log_format_is_json(f) {
            Some(json) => json,
            None => {
                eprintln!("walrelay: --log-format {f:?} is not \"text\" or \"json\"");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => settings.service.log_json,
    };
    if let Command::CheckConfig(args) = cli.command {
        return commands::check_config::run(&path, args);
    }
    init_logging(log_json);
    // Both TLS clients (PostgreSQL, amqps) name aws-lc-rs explicitly; installing it as the
    // process default too keeps any other rustls user on the same provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // One thread for the whole pipeline: the replication task, the publisher task and
    // amqprs's socket tasks hand every event over channels, and on one thread that costs no
    // wake-up of another thread (docs/architecture.md, docs/benchmarks.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walrelay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(_) => commands::run::run(settings).await,
            Command::Status(args) => commands::status::run(&settings, args).await,
            Command::Doctor => commands::doctor::run(&settings).await,
            Command::Tail(args) => commands::tail::run(&settings, args).await,
            Command::Backfill(args) => commands::backfill::run(&settings, args).await,
            Command::Resync(args) => commands::resync::run(&settings, args).await,
            Command::CheckConfig(_) | Command::Ready(_) => unreachable!("handled above"),
        }
    })
}

/// Logs to stderr, filtered by `WALRELAY_LOG` (default `info`). Only walrelay's own events are
/// ever written: its log lines never carry row values, while a dependency's may (the AMQP
/// client logs a returned message whole, body included), and no `WALRELAY_LOG` setting can turn
/// those back on. walrelay reports every failure itself, with its cause.
fn init_logging(json: bool) {
    use tracing_subscriber::filter::{EnvFilter, filter_fn};
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("WALRELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let own = filter_fn(|meta| meta.target().starts_with("walrelay"));
    // Colours only on a terminal: log files and container logs get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry();
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .with_filter(own);
        registry.with(layer).init();
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .with_filter(own);
        registry.with(layer).init();
    }
}
