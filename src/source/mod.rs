//! The PostgreSQL side: our own replication client on `postgres-protocol`, tokio and rustls.
//!
//! - [`params`]: connection URL → typed parameters (TLS mode, CA file, timeouts).
//! - [`tls`]: rustls configuration for libpq's sslmode values.
//! - [`wire`]: cancel-safe framing over TCP/TLS.
//! - [`conn`]: startup, authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries.
//! - [`publication`]: the publication, created from the filter's tables, and a start-up check
//!   of the filter rules against the published tables.
//! - [`setup`]: slot, type catalog, server timeouts.
//! - [`catalog`]: a relation's partition root and row key, read when pgoutput describes it.
//! - [`stream`]: `START_REPLICATION`, XLogData/keepalive in, status updates out.

pub mod catalog;
pub mod conn;
pub mod error;
pub mod params;
pub mod publication;
pub mod setup;
pub mod stream;
pub mod tls;
pub mod wire;

pub use conn::{Connection, SESSION_SETTINGS};
pub use error::{ServerError, SourceError};
pub use params::{ConnParams, SslMode};
