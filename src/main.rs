//! The `walrelay` binary: parses the command line, sets up logging and signals, and runs the
//! library's pipeline. Logic lives in the library so tests can drive it.

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
    },
    /// Validate the configuration file without connecting anywhere.
    CheckConfig {
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
    },
}

/// Exit code for a configuration error (distinct from a runtime failure).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Run { config } | Command::CheckConfig { config } => config.clone(),
    };
    let settings = match walrelay::config::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::CheckConfig { .. } = cli.command {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    init_logging(settings.log_json);
    // lapin compiles in aws-lc-rs; make it the process-wide rustls provider explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received: stopping (waiting for outstanding confirms)");
            let _ = stop_tx.send(true);
        });
        info!(version = env!("CARGO_PKG_VERSION"), slot = %settings.slot, "walrelay starting");
        let metrics = std::sync::Arc::new(walrelay::metrics::Metrics::new());
        match walrelay::pipeline::run(&settings, metrics, stop_rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %walrelay::pipeline::error_chain(&e), "walrelay stopped");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WALRELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and container logs get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
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
