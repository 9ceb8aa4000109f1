//! The PostgreSQL side: our own replication client on `postgres-protocol`, tokio and rustls.
//!
//! - [`params`]: connection URL → typed parameters (TLS mode, CA file, timeouts).
//! - [`wire`]: cancel-safe framing over TCP/TLS.
//! - [`conn`]: startup, authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries.
//! - [`publication`]: the publication, created from the filter's tables, and a start-up check
//!   of the filter rules against the published tables.
//! - [`setup`]: slot, type catalog, server timeouts.
//! - [`catalog`]: a relation's partition root and row key, read when pgoutput describes it.
//! - [`replication`]: `START_REPLICATION`, XLogData/keepalive in, status updates out.
//! - [`sqlstate`]: the server's error codes walrelay acts on, in one table.

pub mod catalog;
pub mod conn;
pub mod error;
pub mod params;
pub mod publication;
pub mod published;
pub mod replication;
#[cfg(test)]
pub(crate) mod scripted;
pub mod setup;
pub mod sqlstate;
pub mod wire;

pub use conn::{Connection, SESSION_SETTINGS};
pub use error::{ServerError, SourceError};
pub use params::{ConnParams, SslMode};

/// Where and how to read changes (`[postgres]`).
#[derive(Clone, Debug)]
pub struct SourceSettings {
    pub conn: ConnParams,
    pub slot: String,
    pub publication: String,
    pub status_interval: std::time::Duration,
    /// Silence from the server after which the replication connection is presumed dead.
    pub receive_timeout: std::time::Duration,
    /// Create the slot with `FAILOVER` (PostgreSQL 17+), so standbys with
    /// `sync_replication_slots` keep a copy that survives a promotion.
    pub failover_slot: bool,
    /// What a broken slot or a publication gap does (`postgres.on_slot_lost`).
    pub on_slot_lost: OnSlotLost,
}

/// `postgres.on_slot_lost`: stop for an operator (who runs `walrelay resync`), or resync at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnSlotLost {
    /// Stop with the cause and the way back (the default: a resync re-reads whole tables, a
    /// cost an operator may want to choose).
    #[default]
    Stop,
    /// Record the gap, repair the slot, announce `stream_gap` and backfill the affected
    /// tables, then go on streaming.
    Resync,
}
