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
        /// Log format: `text` or `json` (overrides `service.log_format`).
        #[arg(long, env = "WALRELAY_LOG_FORMAT")]
        log_format: Option<String>,
    },
    /// Validate the configuration file without connecting anywhere.
    CheckConfig {
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
    },
    /// Show the slot's state, lag and retained WAL (works while walrelay runs elsewhere).
    Status {
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check PostgreSQL and RabbitMQ before the first start; creates nothing.
    Doctor {
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
    },
    /// Print the events walrelay publishes, from a queue bound to its exchange.
    Tail {
        #[arg(long, short, env = "WALRELAY_CONFIG", default_value = "walrelay.toml")]
        config: PathBuf,
        /// Durable queue to declare and consume (shared by every `tail` using the name).
        #[arg(long, default_value = "walrelay.tail")]
        queue: String,
        /// Binding key on the exchange.
        #[arg(long, default_value = "#")]
        binding: String,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Exit when no event arrived for this many seconds.
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
    },
    /// Exit 0 when a walrelay's /readyz says ready (for container HEALTHCHECKs).
    Ready {
        #[arg(long, default_value = "http://127.0.0.1:9187/readyz")]
        url: String,
    },
}

/// Exit code for a configuration error (distinct from a runtime failure).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Run { config, .. }
        | Command::CheckConfig { config }
        | Command::Status { config, .. }
        | Command::Tail { config, .. }
        | Command::Doctor { config } => config.clone(),
        Command::Ready { url } => {
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
    };
    let settings = match walrelay::config::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_json = match &cli.command {
        Command::CheckConfig { .. } => {
            println!("{}: configuration is valid", path.display());
            return ExitCode::SUCCESS;
        }
        Command::Run {
            log_format: Some(f),
            ..
        } => match f.as_str() {
            "json" => true,
            "text" => false,
            other => {
                eprintln!("walrelay: --log-format {other:?} is not \"text\" or \"json\"");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => settings.log_json,
    };
    init_logging(log_json);
    // lapin compiles in aws-lc-rs; make it the process-wide rustls provider explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // One thread for the whole pipeline: the replication and publisher tasks hand every event
    // over a channel, and on one thread that costs no wake-up of another thread. Measured:
    // 37 -> 23 µs of CPU per event at catch-up (docs/benchmarks.md). lapin keeps its own I/O
    // thread, so the broker socket is still served while this thread decodes.
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
    match cli.command {
        Command::Status { json, .. } => runtime.block_on(async {
            match walrelay::status::collect(&settings).await {
                Ok(report) => {
                    if json {
                        println!("{}", report.to_json());
                    } else {
                        print!("{}", report.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("walrelay status: {}", walrelay::pipeline::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Doctor { .. } => runtime.block_on(async {
            let findings = walrelay::doctor::run(&settings).await;
            for f in &findings {
                println!("{f}");
            }
            if walrelay::doctor::passed(&findings) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::Tail {
            queue,
            binding,
            count,
            idle_timeout_secs,
            ..
        } => runtime.block_on(async {
            let opts = walrelay::tail::TailOptions {
                queue,
                binding,
                count,
                idle_timeout: idle_timeout_secs.map(std::time::Duration::from_secs),
            };
            match walrelay::tail::run(&settings, &opts, &mut std::io::stdout()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walrelay tail: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        _ => runtime.block_on(serve(settings)),
    }
}

/// `walrelay run`: the pipeline, the HTTP endpoint and the SQL probe, until a signal.
async fn serve(settings: walrelay::config::Settings) -> ExitCode {
    use std::sync::Arc;
    use walrelay::health::Health;
    use walrelay::metrics::Metrics;
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: stopping (waiting for outstanding confirms)");
        let _ = signal_tx.send(true);
    });
    info!(version = env!("CARGO_PKG_VERSION"), slot = %settings.slot, "walrelay starting");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        settings.status_interval,
        settings.confirm_timeout,
    ));
    let http_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = settings.http_listen {
        let listener = walrelay::http::serve(
            addr,
            Arc::clone(&metrics),
            Arc::clone(&health),
            stop_rx.clone(),
        );
        let stop_tx = stop_tx.clone();
        let failed = Arc::clone(&http_failed);
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                error!(error = %e, "HTTP endpoint failed; stopping");
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = stop_tx.send(true);
            }
        });
    }
    tokio::spawn(walrelay::probe::run(
        settings.clone(),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    let obs = walrelay::pipeline::Observers { metrics, health };
    let code = match walrelay::pipeline::run(&settings, obs, stop_rx).await {
        Ok(()) if http_failed.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %walrelay::pipeline::error_chain(&e), "walrelay stopped");
            ExitCode::FAILURE
        }
    };
    info!("shutdown complete");
    code
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
