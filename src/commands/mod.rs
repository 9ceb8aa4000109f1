//! The commands of the `walrelay` binary, one module each, each with its clap `Args` and a
//! `run` that returns the exit code. `main.rs` only parses, sets up logging and dispatches.
//!
//! - [`run`]: stream until a signal; [`check_config`]: validate the file.
//! - [`doctor`]: a preflight of this machine and both sides; [`status`]: the slot and what a
//!   running walrelay says; [`ready`]: `/readyz` for container health checks.
//! - [`tail`]: print what walrelay publishes; [`backfill`]: request, cancel or list backfills;
//!   [`resync`]: the way back from a broken slot or a publication gap.

pub mod backfill;
pub mod check_config;
pub mod doctor;
pub mod ready;
pub mod resync;
pub mod run;
pub mod status;
pub mod tail;

/// Exit code for a configuration error (distinct from a runtime failure).
pub const EXIT_CONFIG: u8 = 2;
