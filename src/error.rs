//! What an error means, decided in one place: [`RunError::decision`] says whether walrelay
//! reconnects and resumes from the slot, waits as a hot standby, or stops for an operator.
//! The SQLSTATE codes it reads are in one table, `source::sqlstate`; each side's error types
//! only say what happened.
//!
//! Every variant names the side that failed, so `walrelay_errors_total{side}` is true: a bad
//! filter rule is not a PostgreSQL error, and a failed local fsync is not a broker error.

use crate::checkpoint::TrackerError;
use crate::filter::RuleError;
use crate::health;
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::source::publication::CheckError;
use crate::source::sqlstate::{self, Access, Meaning};
use crate::transform::TransformError;

/// Why walrelay stopped (or a session ended).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A filter rule that cannot apply to the table it meets.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A change no filter pattern accounts for, with `filter.on_unmatched = "stop"`.
    #[error("{0}")]
    Unmatched(String),
    /// The position file could not be written or read (walrelay's own state).
    #[error("position file: {0}")]
    PositionFile(String),
    /// The ack tracker met a confirm it was not waiting for: a bug, never retried.
    #[error("broker confirmed a message walrelay was not waiting for: {0}")]
    Tracker(#[from] TrackerError),
    #[error("the publisher task failed: {0}")]
    Task(String),
}

impl From<CheckError> for RunError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Source(e) => RunError::Source(e),
            CheckError::Rule(e) => RunError::Rule(e),
        }
    }
}

impl From<TransformError> for RunError {
    fn from(e: TransformError) -> Self {
        match e {
            TransformError::Sequence(m) => SourceError::Protocol(m).into(),
            TransformError::Event(e) => SourceError::Event(e).into(),
            TransformError::Rule(e) => RunError::Rule(e),
            TransformError::TypesChanged { at, detail } => {
                SourceError::TypesChanged { at, detail }.into()
            }
            e @ TransformError::Unmatched { .. } => RunError::Unmatched(e.to_string()),
        }
    }
}

/// What walrelay does after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// End the session and start a new one after a backoff; the slot replays what the broker
    /// had not confirmed.
    Reconnect,
    /// Another instance streams from the slot: wait as a standby and try again.
    StandBy,
    /// PostgreSQL refused the role (a privilege, the password, `pg_hba.conf`): an operator
    /// must act, and walrelay tries again every `reconnect_max_ms` so that it resumes as soon
    /// as they have, without a restart. Not ready meanwhile, with the cause in `/readyz`.
    Blocked,
    /// An operator must act: stop with the error.
    Stop,
}

/// Which part failed: the `side` label of the error metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Postgres,
    Rabbitmq,
    /// The filter configuration met a table it cannot apply to.
    Filter,
    /// walrelay's own state (position file, ack tracker, its tasks).
    Walrelay,
}

impl Side {
    pub const ALL: [Side; 4] = [Side::Postgres, Side::Rabbitmq, Side::Filter, Side::Walrelay];

    pub fn label(self) -> &'static str {
        match self {
            Side::Postgres => "postgres",
            Side::Rabbitmq => "rabbitmq",
            Side::Filter => "filter",
            Side::Walrelay => "walrelay",
        }
    }
}

impl RunError {
    /// The one place that decides: reconnect and resume, stand by, or stop and report.
    pub fn decision(&self) -> Decision {
        match self {
            RunError::Source(e) => match e.sqlstate().map(sqlstate::meaning) {
                Some(Meaning::SlotBusy) => Decision::StandBy,
                Some(Meaning::Access) => Decision::Blocked,
                _ if e.connection_failed() => Decision::Reconnect,
                // The catalog changed under the session: a new one reads it again.
                _ if matches!(e, SourceError::TypesChanged { .. }) => Decision::Reconnect,
                _ => Decision::Stop,
            },
            // An oversized row never fits, a wrong partition count never changes by itself;
            // everything else the broker did may pass.
            RunError::Sink(
                SinkError::Oversized { .. } | SinkError::OverFrame { .. } | SinkError::Layout(_),
            ) => Decision::Stop,
            RunError::Sink(_) => Decision::Reconnect,
            RunError::Rule(_)
            | RunError::Unmatched(_)
            | RunError::PositionFile(_)
            | RunError::Tracker(_)
            | RunError::Task(_) => Decision::Stop,
        }
    }

    /// True when a new session may succeed (a standby's wait included).
    pub fn is_transient(&self) -> bool {
        self.decision() != Decision::Stop
    }

    /// Which side failed, for metrics and logs.
    pub fn side(&self) -> Side {
        match self {
            RunError::Source(_) => Side::Postgres,
            RunError::Sink(_) => Side::Rabbitmq,
            RunError::Rule(_) | RunError::Unmatched(_) => Side::Filter,
            RunError::PositionFile(_) | RunError::Tracker(_) | RunError::Task(_) => Side::Walrelay,
        }
    }

    /// Why walrelay is between sessions, for `/readyz` (one of `health::RETRY_*`).
    pub fn retrying_code(&self) -> u8 {
        match self {
            RunError::Sink(SinkError::Unroutable { .. }) => health::RETRY_UNROUTABLE,
            RunError::Sink(SinkError::Nacked { .. }) => health::RETRY_NACKED,
            RunError::Sink(_) => health::RETRY_BROKER,
            RunError::Source(SourceError::Server(e))
                if sqlstate::meaning(&e.code) == Meaning::Access =>
            {
                match Access::of(&e.code, &e.message) {
                    Access::Replication => health::RETRY_REPLICATION_ROLE,
                    Access::Privilege => health::RETRY_PRIVILEGE,
                    Access::Password => health::RETRY_PASSWORD,
                    Access::Hba => health::RETRY_HBA,
                    Access::Login => health::RETRY_LOGIN,
                }
            }
            _ => health::RETRY_POSTGRES,
        }
    }

    /// What an operator should check while walrelay retries this error ("" when there is
    /// nothing to do but wait).
    pub fn hint(&self) -> &'static str {
        match self {
            RunError::Source(SourceError::Connect { .. } | SourceError::ConnectTimeout(_)) => {
                "cannot reach PostgreSQL: check postgres.url's host and port, that the server runs and listens there (listen_addresses), and the network between"
            }
            RunError::Source(SourceError::StreamEnded(_)) => {
                "PostgreSQL is shutting down or restarting: walrelay resumes when it is back"
            }
            RunError::Source(SourceError::Silent(_)) => {
                "PostgreSQL stopped answering: check the server and the network path to it"
            }
            RunError::Source(SourceError::TypesChanged { .. }) => "",
            RunError::Source(SourceError::Server(e))
                if sqlstate::meaning(&e.code) == Meaning::Access =>
            {
                Access::of(&e.code, &e.message).remedy()
            }
            RunError::Source(SourceError::PublicationGap { .. }) => {
                "the publication was dropped (and perhaps created again) while the slot still had changes to send: PostgreSQL reads a publication as it was when each change was written, so this slot cannot stream that stretch. `walrelay resync` advances the slot past it, announces stream_gap and backfills the tables (or set postgres.on_slot_lost = \"resync\"); docs/operations.md, When a slot is lost"
            }
            RunError::Source(SourceError::SlotLost {
                broken: crate::source::error::Broken::Foreign,
                ..
            }) => "choose another postgres.slot: this one is not walrelay's",
            RunError::Source(SourceError::SlotLost { .. }) => {
                "`walrelay resync` records the gap, repairs the slot, announces stream_gap and backfills the tables (or set postgres.on_slot_lost = \"resync\"); docs/operations.md, When a slot is lost"
            }
            RunError::Source(e) => match e.sqlstate().map(sqlstate::hint) {
                Some(h) if !h.is_empty() => h,
                _ => "check the PostgreSQL server's log",
            },
            RunError::Sink(SinkError::Unroutable { .. }) => {
                "bind a queue for that routing key (walrelay doctor lists every unbound key); the stream resumes once the message is routable"
            }
            RunError::Sink(SinkError::Nacked { .. }) => {
                "the queue refused the message: check its length limits and overflow policy"
            }
            RunError::Sink(SinkError::ConnectTimeout { .. }) => {
                "cannot reach RabbitMQ: check rabbitmq.url's host and port, that the broker runs, and the network between"
            }
            RunError::Sink(_) => "check RabbitMQ's state and log (alarms, connections)",
            RunError::Rule(_) | RunError::Unmatched(_) => "",
            RunError::PositionFile(_) => {
                "check service.state_file: its directory must exist and be writable by walrelay"
            }
            RunError::Tracker(_) | RunError::Task(_) => "",
        }
    }
}

/// Formats an error with its sources, each once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::error::ServerError;

    fn server(code: &str) -> RunError {
        SourceError::Server(ServerError {
            code: code.into(),
            ..Default::default()
        })
        .into()
    }

    #[test]
    fn decisions() {
        assert_eq!(server("55006").decision(), Decision::StandBy);
        assert_eq!(server("57P01").decision(), Decision::Reconnect);
        assert_eq!(server("08006").decision(), Decision::Reconnect);
        assert_eq!(server("28P01").decision(), Decision::Blocked);
        assert_eq!(server("42501").decision(), Decision::Blocked);
        assert_eq!(server("40P01").decision(), Decision::Reconnect);
        assert_eq!(server("XX000").decision(), Decision::Stop);
        let silent: RunError = SourceError::Silent(std::time::Duration::from_secs(1)).into();
        assert_eq!(silent.decision(), Decision::Reconnect);
        let ended: RunError = SourceError::StreamEnded("CopyDone").into();
        assert_eq!(
            ended.decision(),
            Decision::Reconnect,
            "a clean server shutdown"
        );
        let unroutable: RunError = SinkError::Unroutable {
            id: "x".into(),
            exchange: "e".into(),
            routing_key: "k".into(),
        }
        .into();
        assert_eq!(unroutable.decision(), Decision::Reconnect);
        assert_eq!(unroutable.retrying_code(), health::RETRY_UNROUTABLE);
        let oversized: RunError = SinkError::Oversized {
            id: "x".into(),
            table: "t".into(),
            size: 2,
            max: 1,
        }
        .into();
        assert_eq!(oversized.decision(), Decision::Stop);
        let over_frame: RunError = SinkError::OverFrame {
            id: "x".into(),
            table: "t".into(),
            size: 2,
            max: 1,
        }
        .into();
        assert_eq!(over_frame.decision(), Decision::Stop);
    }

    #[test]
    fn sides_are_the_metrics_labels() {
        assert_eq!(
            Side::ALL.map(Side::label),
            crate::metrics::ERROR_SIDES,
            "walrelay_errors_total pre-registers exactly the sides errors report"
        );
    }

    #[test]
    fn sides_are_true() {
        assert_eq!(server("57P01").side(), Side::Postgres);
        assert_eq!(
            RunError::PositionFile("disk full".into()).side(),
            Side::Walrelay
        );
        assert_eq!(
            RunError::Tracker(TrackerError::UnexpectedConfirm).side(),
            Side::Walrelay
        );
        assert_eq!(RunError::Unmatched("t".into()).side(), Side::Filter);
        assert!(server("57P01").hint().contains("shutting down"));
    }
}
