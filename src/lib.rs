//! walrelay: streams committed PostgreSQL changes to RabbitMQ through logical decoding, at least once.
//!
//! The layout, by layer: each module imports only from its own layer or below, and
//! `tests/architecture.rs` checks it (docs/architecture.md walks one row change through them).
//! Modules the binary, the tests and the benches do not name are private.
//!
//! - L5 faces: [`commands`] (run, check-config, doctor, status, tail, backfill, resync, ready).
//! - L4 running: `service` (`walrelay run` as a call), `pipeline` (sessions: the replication
//!   and publisher tasks, reconnects, clean shutdown), `http` (`/metrics`, `/healthz`,
//!   `/readyz`, `/activez`), `probe` (retained WAL, heartbeats), `preflight` (what `run`
//!   checks on this machine before it creates anything), `resync` (the way back from a broken
//!   slot or a publication gap).
//! - L3 policy: [`error`] (what an error means: reconnect, stand by, stop), [`config`] (the
//!   TOML file and environment overrides, validated into typed values).
//! - L2 stages and clients: `transform` (pure: decoded messages to events, with the filter's
//!   verdicts, the flood guard and backfill windows), [`source`] (our replication client),
//!   [`sink`] (the `Sink` trait and its contract; exchanges over AMQP, streams), `backfill`
//!   (existing rows beside the stream).
//! - L1 domain: [`event`] (the envelope consumers receive), `filter` (which changes are
//!   published, and how), `checkpoint` (the ack tracker), `position_file`.
//! - L0 words: [`lsn`], [`value`] (`to_jsonb()` rendering), [`pgoutput`] (the decoder),
//!   `schema` (a relation's catalog facts), `tls`, [`metrics`], `health`, `secret`,
//!   `failpoint`, `shutdown`.

mod backfill;
mod checkpoint;
pub mod commands;
pub mod config;
pub mod error;
pub mod event;
mod failpoint;
mod filter;
mod health;
mod http;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
mod pipeline;
mod position_file;
mod preflight;
mod probe;
mod resync;
mod schema;
mod secret;
mod service;
mod shutdown;
pub mod sink;
pub mod source;
mod tls;
mod transform;
pub mod value;
