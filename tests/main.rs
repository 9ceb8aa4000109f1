//! walrelay's integration tests, in one binary (one link, one run that schedules every test
//! together): a module per suite, the harness in `common/`. Select a suite with its module
//! path, e.g. `cargo test --test main -- pipeline::` or `-- chaos:: network::`.
//!
//! Every test starts its own PostgreSQL cluster and names its own exchanges, queues, slots and
//! streams, so suites run side by side. The one thing they share and some of them stop is
//! RabbitMQ 4: those take it alone (`common::rabbitmq4`), the others shared.

mod common;

mod architecture;
mod artifacts;
mod auth;
mod backfill;
mod broker_faults;
mod broker_nodes;
mod chaos;
mod cli;
mod compose;
mod dead_letters;
mod demo;
mod docs;
mod doctor;
mod failover;
mod faults;
mod fidelity;
mod filters;
mod flood_then;
mod getting_started;
mod grants;
mod heal;
mod huge_row;
mod identity;
mod image;
mod kubernetes;
mod log_privacy;
mod network;
mod observability;
mod odd_data;
mod operate;
mod pipeline;
mod publications;
mod rabbitmq_cluster;
mod refusals;
mod resync;
mod stream_broker_restart;
mod stream_broker_silence;
mod stream_filters;
mod stream_load_balancer;
mod stream_refusals;
mod stream_sink;
mod stream_slot_hold;
mod streams;
mod super_stream;
mod tail;
mod tls;
mod type_changes;
