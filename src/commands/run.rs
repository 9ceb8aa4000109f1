//! `walrelay run`: the service until SIGTERM or SIGINT, which start a clean shutdown (outstanding
//! confirms drained, the final position reported).

use std::process::ExitCode;

use tracing::{error, info};

use crate::config::Settings;
use crate::shutdown::Shutdown;

/// `walrelay run`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Log format: `text` or `json` (overrides `service.log_format`).
    #[arg(long, env = "WALRELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
}

pub async fn run(settings: Settings) -> ExitCode {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: stopping (waiting for outstanding confirms)");
        trigger.trigger();
    });
    let code = match crate::service::run(settings, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %crate::error::error_chain(&e), "walrelay stopped");
            ExitCode::FAILURE
        }
    };
    info!("shutdown complete");
    code
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
