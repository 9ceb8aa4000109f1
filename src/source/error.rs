//! Errors of the PostgreSQL side. What each means (reconnect, stand by, stop) is decided in
//! `crate::error`; this file only says what happened.

use super::sqlstate;
use super::wire::WireError;
use crate::event::EventError;
use crate::pgoutput::DecodeError;
use crate::tls::TlsError;

/// An ErrorResponse from the server, with the fields operators need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55006` for "replication slot is active".
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl ServerError {
    /// Parses the fields of an ErrorResponse or NoticeResponse body.
    pub fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        for field in body.split(|&b| b == 0) {
            let Some((&code, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match code {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        e
    }
}

/// How a replication slot broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// It does not exist (any more).
    Dropped,
    /// It exists but cannot give changes: `wal_status = lost` (its WAL was removed), or
    /// invalidated by a recovery conflict.
    Invalidated,
    /// Someone else advanced it past the position walrelay last confirmed.
    Moved,
    /// It belongs to another plugin or database: a different slot under this name, which no
    /// resync may drop.
    Foreign,
}

impl Broken {
    /// The `cause` walrelay records and reports (metrics, the `stream_gap` event).
    pub fn label(self) -> &'static str {
        match self {
            Broken::Dropped => "slot_dropped",
            Broken::Invalidated => "slot_invalidated",
            Broken::Moved => "slot_moved",
            Broken::Foreign => "slot_foreign",
        }
    }
}

/// Everything that can go wrong on the PostgreSQL side.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to PostgreSQL at {0}")]
    ConnectTimeout(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS handshake with PostgreSQL failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    #[error(
        "PostgreSQL does not offer TLS, and sslmode={} {}requires it. For a local server without TLS, \
         add sslmode=disable to postgres.url (postgres://user@host:5432/db?sslmode=disable); in production, \
         enable TLS on the server instead (ssl = on), or passwords and row data cross the network in clear text",
        .0.as_str(),
        if *.0 == super::params::SslMode::VerifyFull { "(the default) " } else { "" }
    )]
    TlsRefused(super::params::SslMode),
    #[error("PostgreSQL: {0}")]
    Server(ServerError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("unexpected message from PostgreSQL: {0}")]
    Protocol(String),
    #[error("decoding the replication stream: {0}")]
    Decode(#[from] DecodeError),
    #[error("building an event: {0}")]
    Event(#[from] EventError),
    /// A type changed after this session read the catalog: the session restarts to read it
    /// again, resuming from the slot (nothing is skipped).
    #[error("the catalog changed while streaming ({detail}) at {at}; reading the types again")]
    TypesChanged { at: crate::lsn::Lsn, detail: String },
    #[error("replication slot {slot:?} {problem}")]
    SlotLost {
        slot: String,
        problem: String,
        /// How it broke: what `walrelay resync` (or `postgres.on_slot_lost = "resync"`) does
        /// about it, if anything.
        broken: Broken,
    },
    /// PostgreSQL cannot decode changes with the publication as it was when they were written:
    /// it was dropped (and perhaps created again) while the slot still had changes to send.
    /// Up to PostgreSQL 17 the walsender fails on every start at the same point; PostgreSQL 18
    /// skips the changes with a WARNING (`skipped: true`), which walrelay treats as the same
    /// gap rather than let changes go by unpublished.
    #[error(
        "publication {publication:?} is missing at a point of the WAL the slot must still decode ({message}): the changes written while it was missing cannot be streamed"
    )]
    PublicationGap {
        publication: String,
        message: String,
        skipped: bool,
    },
    #[error("setup: {0}")]
    Setup(String),
    #[error(
        "no message from PostgreSQL for {0:?} (not even an answer to a keepalive request): the connection is presumed dead"
    )]
    Silent(std::time::Duration),
    #[error(
        "PostgreSQL ended the replication stream ({0}): the server is shutting down or restarting"
    )]
    StreamEnded(&'static str),
    #[error(
        "the catalog lookup on the plain SQL connection took more than {0:?}: PostgreSQL is overloaded or unreachable"
    )]
    CatalogTimeout(std::time::Duration),
}

impl SourceError {
    /// True when the connection itself failed (refused, timed out, closed, silent, or the
    /// server ending it), so a new connection may succeed; false for what the server refused.
    pub fn connection_failed(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::ConnectTimeout(_)
            | SourceError::Wire(WireError::Io(_) | WireError::Closed)
            | SourceError::TlsHandshake(_)
            | SourceError::Silent(_)
            | SourceError::StreamEnded(_)
            | SourceError::CatalogTimeout(_) => true,
            SourceError::Server(e) => sqlstate::meaning(&e.code) == sqlstate::Meaning::Retry,
            _ => false,
        }
    }

    /// The SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0\0";
        let e = ServerError::parse(body);
        assert_eq!(e.code, "55006");
        assert_eq!(e.severity, "ERROR");
        assert!(!SourceError::Server(e).connection_failed());
        let e = ServerError {
            code: "57P01".into(),
            ..Default::default()
        };
        assert!(SourceError::Server(e).connection_failed());
    }
}
