//! `walrelay check-config`: validates the configuration without connecting anywhere, or
//! prints the effective one (the file with the environment's overrides, secrets redacted).

use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;

/// `walrelay check-config`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Print the effective configuration (the file with environment overrides applied,
    /// secrets redacted).
    #[arg(long)]
    show: bool,
}

/// Called once the file loaded (a file that does not load never gets here).
pub fn run(path: &Path, args: Args) -> ExitCode {
    if !args.show {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    match crate::config::effective(path) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walrelay: invalid configuration in {}: {e}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
