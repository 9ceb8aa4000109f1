//! walrelay: streams committed PostgreSQL changes to RabbitMQ through logical decoding, at least once.
//!
//! Layout (one module per domain concept; see `docs/architecture.md` for the data flow):
//! - [`lsn`]: WAL positions.
//! - [`pgoutput`]: pure decoder of the pgoutput protocol, with the relation cache.
//! - [`value`]: renders column values exactly as PostgreSQL's `to_jsonb()` does.
//! - [`event`]: the change event envelope consumers receive, and its JSON encoding.
//! - [`filter`]: which changes are published (tables, ops, columns, row predicates, no-op
//!   updates) and the flood guard for bulk transactions.
//! - [`metrics`]: Prometheus metrics; [`health`]: liveness and readiness; [`http`]: serves both.
//! - [`backfill`]: existing rows published beside the stream (watermarks, chunks, progress).
//! - [`checkpoint`]: the ack tracker that decides which LSN may be confirmed to PostgreSQL.
//! - [`source`]: our replication connection (TLS, auth, framing, slot and publication setup).
//! - [`sink`]: the RabbitMQ publisher (confirms, `mandatory`, bounded in-flight window).
//! - [`stream`]: the RabbitMQ Streams sink (its own stream-protocol publishing connection,
//!   publishing ids the broker deduplicates on, super streams).
//! - [`pipeline`]: wires source and sink into sessions, reconnects, shuts down cleanly.
//! - [`error`]: what an error means (reconnect, stand by, stop) and which side it is on.
//! - [`secret`]: passwords that never print.
//! - [`config`]: the TOML file and environment overrides, validated into typed values.
//! - [`preflight`]: what `run` checks on this machine before it creates anything.
//! - [`service`]: `walrelay run` as a library call (pipeline, HTTP, probe, progress line).
//! - [`doctor`], [`status`], [`tail`]: the operator commands.

pub mod backfill;
pub mod checkpoint;
pub mod config;
pub mod doctor;
pub mod error;
pub mod event;
pub mod failpoint;
pub mod filter;
pub mod health;
pub mod http;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod position_file;
pub mod preflight;
pub mod probe;
pub mod secret;
pub mod service;
pub mod sink;
pub mod source;
pub mod status;
pub mod stream;
pub mod tail;
pub mod value;
