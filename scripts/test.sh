#!/usr/bin/env bash
# The one command that runs walrelay's whole test suite on a fresh Debian/Ubuntu machine:
# installs PostgreSQL and RabbitMQ from the distribution if missing, makes sure RabbitMQ is
# running on 127.0.0.1:5672 (guest/guest) with its management API on 15672, starts RabbitMQ 4 on
# other ports (scripts/rabbitmq4.sh), then runs every test. Each integration test starts
# its own throwaway PostgreSQL cluster (initdb in a temp dir, wal_level=logical, a free port),
# so the system PostgreSQL is never touched and needs no configuration. Formatting and clippy
# (with the lints of Cargo.toml) are checked first: a warning fails the suite. Last, the core
# AMQP tests run again against RabbitMQ 4.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/services.sh
. scripts/tools.sh
# RabbitMQ 4 beside it, for the stream tests (a cached debootstrap root; about a minute the
# first time on a machine, seconds after; `scripts/rabbitmq4.sh stop` removes it from memory).
bash scripts/rabbitmq4.sh start

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked "$@"
# The whole suite publishes over AMQP to the system's 3.10; the core AMQP tests run against
# RabbitMQ 4 too (the stream tests above already use it). The full AMQP matrix, with classic
# and quorum queues, is scripts/rabbitmq-matrix.sh.
# The integration tests are one binary (tests/main.rs): a suite is selected by its module path
# (a filter matches anywhere in a test's name, so `refusals::` needs stream_refusals skipped).
echo "== the core AMQP tests against RabbitMQ 4 (pipeline, refusals)"
WALRELAY_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2f \
  cargo test --locked --test main -- pipeline:: refusals:: --skip stream_refusals::
