#!/usr/bin/env bash
# The tests that need a three-node RabbitMQ cluster (tests/rabbitmq_cluster.rs): starts it with
# scripts/rabbitmq-cluster.sh (about 30 s the first time after the RabbitMQ 4 root exists),
# runs them, and leaves the cluster running (`scripts/rabbitmq-cluster.sh stop` ends it).
# Not part of scripts/test.sh: a rolling restart of three nodes takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rabbitmq-cluster.sh start
cargo test --locked --test main -- rabbitmq_cluster:: --include-ignored --nocapture --test-threads=1 "$@"
