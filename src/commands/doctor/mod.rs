//! `walrelay doctor`: a preflight of both sides before anything is created. Every check reads;
//! nothing is created or changed (RabbitMQ exchanges are probed passively). One line per
//! finding; the exit code is 1 when any finding is a failure.
//!
//! - `walrelay`: this machine — the HTTP port is free, the position file and the CA bundles
//!   load (what `run` checks before it creates anything).
//! - `postgres`: logical decoding, privileges, slot and sender headroom, WAL retention limits,
//!   the publication and each table's replica identity.
//! - `rabbitmq`: credentials, exchanges, bindings for every routing key the config can
//!   produce, queue durability and type (through the management API); on a cluster, every
//!   listed node, a list of one node, classic queues.
//! - `stream`: with `[stream]`, the stream port and each stream instead.

mod cluster;
mod local;
mod permissions;
mod postgres;
mod rabbitmq;
mod stream;
mod tables;
/// Topic matching lives with the sink, which uses it too (a binding that appears ends the
/// wait after an unroutable message); the doctor matches bindings with it.
pub use crate::sink::amqp::topic;

use crate::config::Settings;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub side: &'static str,
    pub message: String,
}

impl Finding {
    pub fn new(level: Level, side: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            level,
            side,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag} {}: {}", self.side, self.message)
    }
}

/// A table the configuration streams, with the operations it publishes.
#[derive(Clone, Debug)]
pub struct Streamed {
    pub schema: String,
    pub name: String,
    pub ops: Vec<&'static str>,
    /// Replica identity columns, for `{key.x}` and partitions in routing keys.
    pub key_columns: Vec<String>,
}

/// `walrelay doctor`: prints one line per finding; exit code 1 when any failed.
pub async fn run(settings: &Settings) -> std::process::ExitCode {
    let found = findings(settings).await;
    for f in &found {
        println!("{f}");
    }
    if passed(&found) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Runs every check.
pub async fn findings(settings: &Settings) -> Vec<Finding> {
    let mut findings = Vec::new();
    local::check(settings, &mut findings).await;
    let tables = postgres::check(settings, &mut findings).await;
    match &settings.sink.stream {
        Some(stream_settings) => stream::check(settings, stream_settings, &mut findings).await,
        None => rabbitmq::check(settings, &tables, &mut findings).await,
    }
    findings
}

/// True when no finding is a failure.
pub fn passed(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.level != Level::Fail)
}
