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
//! - [`pipeline`]: wires source and sink into sessions, reconnects, shuts down cleanly.
//! - [`error`]: what an error means (reconnect, stand by, stop) and which side it is on.
//! - [`schema`]: the catalog's facts about a relation (names, partition root, key candidates).
//! - [`tls`]: rustls client configurations for every connection.
//! - [`secret`]: passwords that never print.
//! - [`config`]: the TOML file and environment overrides, validated into typed values.
//! - [`preflight`]: what `run` checks on this machine before it creates anything.
//! - [`service`]: `walrelay run` as a library call (pipeline, HTTP, probe, progress line).
//! - [`commands`]: the binary's commands (run, doctor, status, tail, backfill, ready, check-config).
//! - [`shutdown`]: the one shutdown signal every task listens to.
//! - [`transform`]: the pure stage from decoded messages to events (filter, flood guard, backfill windows).

pub mod backfill;
pub mod checkpoint;
pub mod commands;
pub mod config;
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
pub mod schema;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod tls;
pub mod transform;
pub mod value;
