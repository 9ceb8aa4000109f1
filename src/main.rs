//! The `walrelay` binary: parses the command line, sets up logging and signals, and calls the
//! library (`walrelay::service::run` for `run`). Logic lives in the library so tests can drive it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::{error, info};

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
    Run {
        /// Log format: `text` or `json` (overrides `service.log_format`).
        #[arg(long, env = "WALRELAY_LOG_FORMAT")]
        log_format: Option<String>,
    },
    /// Validate the configuration file without connecting anywhere.
    CheckConfig {
        /// Print the effective configuration (the file with environment overrides applied,
        /// secrets redacted).
        #[arg(long)]
        show: bool,
    },
    /// Show the slot's state, lag and retained WAL (works while walrelay runs elsewhere).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check PostgreSQL and RabbitMQ before the first start; creates nothing.
    Doctor,
    /// Print the events walrelay publishes: by default through a temporary queue bound to its
    /// exchange, from now on.
    Tail {
        /// Read this queue instead (declared durable when missing). It is only peeked at —
        /// messages go back when tail exits — unless `--ack` is given.
        #[arg(long)]
        queue: Option<String>,
        /// Binding key on the exchange (default `#` for the temporary queue; for `--queue`,
        /// bound only when given).
        #[arg(long)]
        binding: Option<String>,
        /// With `--queue`: remove the printed messages from the queue.
        #[arg(long)]
        ack: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Exit when no event arrived for this many seconds.
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
        /// With `[stream]`: where to start reading — `first`, `last`, `next` (the default), an
        /// offset, or an RFC 3339 time (e.g. 2026-12-02T18:00:00Z).
        #[arg(long)]
        offset: Option<walrelay::tail::stream::From>,
    },
    /// Backfill a table's existing rows beside the stream (as `read` events); the instance that
    /// holds the slot runs it. `--status` lists backfills, `--cancel` stops them.
    Backfill {
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
    },
    /// Exit 0 when a walrelay's /readyz says ready (for container HEALTHCHECKs).
    Ready {
        /// Defaults to `/readyz` on `http.listen`'s default address.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Exit code for a configuration error (distinct from a runtime failure).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ready { url } = &cli.command {
        let default = format!("http://{}/readyz", walrelay::config::DEFAULT_HTTP_LISTEN);
        let url = url.as_deref().unwrap_or(&default);
        return match walrelay::http::http_get(url) {
            Ok((200, _)) => ExitCode::SUCCESS,
            Ok((code, body)) => {
                eprintln!("walrelay ready: {code} {body}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("walrelay ready: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let path = cli.config.clone();
    let settings = match walrelay::config::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_json = match &cli.command {
        Command::CheckConfig { show } => {
            if *show {
                match walrelay::config::effective(&path) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            } else {
                println!("{}: configuration is valid", path.display());
            }
            return ExitCode::SUCCESS;
        }
        Command::Run {
            log_format: Some(f),
        } => match walrelay::config::log_format_is_json(f) {
            Some(json) => json,
            None => {
                eprintln!("walrelay: --log-format {f:?} is not \"text\" or \"json\"");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => settings.service.log_json,
    };
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
    runtime.block_on(dispatch(cli.command, settings))
}

/// Runs a command that needs the configuration and the runtime.
async fn dispatch(command: Command, settings: walrelay::config::Settings) -> ExitCode {
    match command {
        Command::Status { json } => match walrelay::status::collect(&settings).await {
            Ok(report) => {
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_table());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("walrelay status: {}", walrelay::error::error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Backfill {
            table,
            where_clause,
            status,
            cancel,
        } => {
            use walrelay::backfill::cli::{Request, run};
            let request = match (table.as_deref(), status, cancel) {
                (_, true, _) => Request::Status,
                (t, _, true) => Request::Cancel { table: t },
                (Some(t), _, _) => Request::Start {
                    table: t,
                    where_clause: where_clause.as_deref(),
                },
                (None, _, _) => Request::Status,
            };
            match run(&settings, request).await {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("walrelay backfill: {}", walrelay::error::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor => {
            let findings = walrelay::doctor::run(&settings).await;
            for f in &findings {
                println!("{f}");
            }
            if walrelay::doctor::passed(&findings) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Tail {
            queue,
            binding,
            ack,
            count,
            idle_timeout_secs,
            offset,
        } => {
            let idle_timeout = idle_timeout_secs.map(std::time::Duration::from_secs);
            if let Some(stream) = &settings.sink.stream {
                if let Some(flag) = [
                    ("--queue", queue.is_some()),
                    ("--binding", binding.is_some()),
                    ("--ack", ack),
                ]
                .into_iter()
                .find_map(|(flag, set)| set.then_some(flag))
                {
                    eprintln!(
                        "walrelay tail: {flag} applies to an exchange; with [stream], tail reads the stream from --offset"
                    );
                    return ExitCode::from(2);
                }
                let from = offset.unwrap_or(walrelay::tail::stream::From::Next);
                let out = &mut std::io::stdout();
                return match walrelay::tail::stream::run(
                    &settings,
                    stream,
                    &from,
                    count,
                    idle_timeout,
                    out,
                )
                .await
                {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("walrelay tail: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            if offset.is_some() {
                eprintln!(
                    "walrelay tail: --offset applies to [stream]; an exchange's queue has no offsets"
                );
                return ExitCode::from(2);
            }
            let opts = walrelay::tail::TailOptions {
                queue,
                binding,
                ack,
                count,
                idle_timeout,
            };
            match walrelay::tail::run(&settings, &opts, &mut std::io::stdout()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walrelay tail: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => serve(settings).await,
    }
}

/// `walrelay run`: the service until a signal.
async fn serve(settings: walrelay::config::Settings) -> ExitCode {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: stopping (waiting for outstanding confirms)");
        let _ = stop_tx.send(true);
    });
    let code = match walrelay::service::run(settings, stop_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %walrelay::error::error_chain(&e), "walrelay stopped");
            ExitCode::FAILURE
        }
    };
    info!("shutdown complete");
    code
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
